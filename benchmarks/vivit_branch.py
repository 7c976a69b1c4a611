"""vit-pytorch's ViViT as STFN's spatial branch (bench-only; vit-pytorch is not a runtime
dependency): the peer our spacetime-patch encoder is held against, at matched size.

`ViViTBranch` keeps ViViT's own tubelet embedding (LayerNorm, linear, LayerNorm), its joint
space-time position embedding and its factorised self-attention blocks (space, then time - not
causal - then MLP, pre-norm, no LayerScale), and drops its pooling and class head: STFN aligns
and pools the tokens itself. It sits behind the same stem as ours (`model.patch_stem`), so the
two differ only in what ViViT and our encoder do after the stem.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from einops import rearrange
from torch import nn


def vivit_class():
    """vit-pytorch's ViViT. Its package __init__ imports torchvision (for DINO), whose PyPI build
    does not load beside this torch; vivit.py itself needs only torch and einops."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vit-pytorch is not installed: `make bench` installs it (pip install --no-deps vit-pytorch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "vivit.py"
    mod_spec = importlib.util.spec_from_file_location("vit_pytorch_vivit", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.ViViT


class ViViTBranch(nn.Module):
    """Frames (B, F, C, H, W) -> tokens (B, F/t, N, D), like `SpacetimePatchEmbed`, through ViViT."""

    def __init__(self, cfg) -> None:
        from stfn.patches import SpacetimePatchEmbed

        super().__init__()
        frames, (h, w) = len(cfg.frame_steps), tuple(cfg.frame_size)
        # our encoder built only to lend its stem (the same modules and initialisation) and grid
        ours = SpacetimePatchEmbed(
            cfg.frame_channels, cfg.dim, (h, w), frames, tubelet=cfg.tubelet, patch=cfg.patch, stem=cfg.patch_stem
        )
        self.stem, self.tubelet, self.grid = ours.stem, cfg.tubelet, ours.grid
        with torch.no_grad():
            probe = torch.zeros(1, cfg.frame_channels, h, w)
            c, mh, mw = (self.stem(probe) if self.stem is not None else probe).shape[1:]
        vivit = vivit_class()(
            image_size=(mh, mw),
            image_patch_size=ours.cell,
            frames=frames,
            frame_patch_size=cfg.tubelet,
            num_classes=1,
            dim=cfg.dim,
            spatial_depth=cfg.patch_depth,
            temporal_depth=cfg.patch_depth,
            heads=cfg.heads,
            dim_head=cfg.dim // cfg.heads,
            mlp_dim=2 * cfg.dim,  # our blocks' MLP width (mlp_ratio 2)
            pool="mean",
            channels=c,
            variant="factorized_self_attention",
        )
        self.embed, self.pos, self.blocks = (
            vivit.to_patch_embedding,
            vivit.pos_embedding,
            vivit.factorized_transformer,
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b = frames.shape[0]
        if self.stem is not None:
            x = rearrange(frames, "b f c h w -> (b f) c h w").contiguous(memory_format=torch.channels_last)
            video = rearrange(self.stem(x), "(b f) c h w -> b c f h w", b=b)
        else:
            video = rearrange(frames, "b f c h w -> b c f h w")
        return self.blocks(self.embed(video) + self.pos)


@contextmanager
def vivit_inside_stfn():
    """While open, `model.spatial_encoder=patches` builds ViViTBranch instead of our encoder (the
    one line in stfn.models that picks the branch, patched: the rest of STFN, the training loop
    and the scoring stay the project's own)."""
    from stfn import models

    real = models.build_spatial

    def build(cfg):
        return ViViTBranch(cfg) if cfg.spatial_encoder == "patches" else real(cfg)

    with mock.patch.object(models, "build_spatial", build):
        yield
