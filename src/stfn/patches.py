"""The experimental spatial encoder (`model.spatial_encoder: patches`): spacetime tubelets
(t frames x p x p pixels) embedded as tokens, then a factorised transformer (attention within a
frame, then across frames at each cell), ViViT's model 2. Below the default CNN on moving-digits
(docs, "The model"), kept to compare against it.

    frames (B, F, C, H, W) --SpacetimePatchEmbed--> (B, F/t, N, D)   N = (H/p)*(W/p) cells"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stfn.encoders import SpatialEncoder, cnn_front


class SelfAttention(nn.Module):
    """Multi-head self-attention with `scaled_dot_product_attention`; (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def _out(self, y: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        return self.out(y) if gain is None else scaled_linear(y, self.out, gain)

    def forward(self, x: torch.Tensor, causal: bool = False, gain: torch.Tensor | None = None) -> torch.Tensor:
        """`gain`: a per-channel factor of the output (LayerScale), folded into the output projection."""
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, L, D/heads)
        return self._out(rearrange(y, "b h l d -> b l (h d)"), gain)

    def along_time(self, x: torch.Tensor, causal: bool = True, gain: torch.Tensor | None = None) -> torch.Tensor:
        """Attention along dim 1 of (B, T, N, D), each of the N cells on its own: the same numbers
        as `forward` on the (B N, T, D) rearrangement. Cells and heads become the attention's head
        dimension, so q, k and v are copied in their own (B, T, N, D) order (reshape) instead of
        transposed to (B N, T, D) and back: training steps took 0.94-0.99x the time here."""
        b, t, n, d = x.shape
        q, k, v = (
            z.reshape(b, t, n * self.heads, d // self.heads).transpose(1, 2)
            for z in self.qkv(x).view(b, t, n, 3, d).unbind(3)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, N heads, T, D/heads)
        return self._out(y.transpose(1, 2).reshape(b, t, n, d), gain)


def scaled_linear(x: torch.Tensor, linear: nn.Linear, gain: torch.Tensor) -> torch.Tensor:
    """linear(x) * gain, with the gain folded into the weight and bias: the same numbers, but the
    multiplication (and its gradient, a sum over every token) touches D x D numbers, not B x L x D."""
    return F.linear(x, linear.weight * gain[:, None], linear.bias * gain)


class FactorisedBlock(nn.Module):
    """Space attention within each time slice, then time attention per grid cell (causal: a
    token never sees later frames), then an MLP; pre-norm residuals. (B, T', N, D) -> same.
    `drop_path`: in training, each sample skips the block's residual branches with this
    probability (stochastic depth; torchvision's `stochastic_depth` in four lines, rather than a
    dependency on torchvision for it)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, drop_path: float = 0.0, layer_scale: float = 0.0):
        super().__init__()
        self.norm_s, self.norm_t, self.norm_m = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.space, self.time = SelfAttention(dim, heads), SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop_path = drop_path
        # LayerScale: one gain per branch (space, time, mlp) and channel, folded into each branch's
        # last linear layer (`scaled_linear`): the full-size multiply and its gradient's sum over
        # every token took ~12 % of a patches training step
        self.gains = nn.Parameter(torch.full((3, dim), layer_scale)) if layer_scale else None

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.drop_path):
            return y
        keep = 1.0 - self.drop_path
        mask = y.new_empty((y.shape[0],) + (1,) * (y.dim() - 1)).bernoulli_(keep)
        return y * mask.div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        g = (None, None, None) if self.gains is None else self.gains.unbind(0)
        s = self.space(rearrange(self.norm_s(x), "b t n d -> (b t) n d"), gain=g[0])
        x = x + self._drop(rearrange(s, "(b t) n d -> b t n d", b=b))
        x = x + self._drop(self.time.along_time(self.norm_t(x), causal=True, gain=g[1]))
        if g[2] is None:
            return x + self._drop(self.mlp(self.norm_m(x)))
        hidden = self.mlp[1](self.mlp[0](self.norm_m(x)))
        return x + self._drop(scaled_linear(hidden, self.mlp[2], g[2]))


class SpacetimePatchEmbed(nn.Module):
    """Spacetime patches: tubelets of t x p x p pixels (a strided Conv3d) with separate learned
    space and time position embeddings, then a small factorised transformer.
    (B, F, C, H, W) -> (B, F/t, (H/p)(W/p), D).

    `stem="conv"` puts a convolutional stem before the tubelet projection (Xiao et al. 2021,
    "Early convolutions help transformers see better"): per frame, the CNN encoder's first two
    layers (PixelUnshuffle + 3x3 conv to 16 channels, GELU, 3x3 conv to 32, 2x2 max-pool, GELU) take
    the frame to a quarter of its size, and tubelets of t x p/4 x p/4 cells of that map become the
    tokens: the same token grid, but a token sees its pixels through overlapping local filters instead
    of one linear map of a digit cut at patch borders."""

    def __init__(
        self,
        channels: int,
        dim: int,
        frame_size: tuple[int, int],
        frames: int,
        *,
        tubelet: int = 1,
        patch: int = 8,
        depth: int = 2,
        heads: int = 4,
        stem: str = "linear",
        drop_path: float = 0.0,
        layer_scale: float = 0.0,
        overlap: bool = False,
    ):
        super().__init__()
        h, w = frame_size
        if frames % tubelet or h % patch or w % patch:
            raise ValueError(
                f"frames {frames} must be divisible by model.tubelet {tubelet}, and the frame size "
                f"{frame_size} by model.patch {patch}"
            )
        if stem == "conv":
            if patch % 4:
                raise ValueError(f"model.patch {patch} must be a multiple of 4 with model.patch_stem conv")
            self.stem = nn.Sequential(*cnn_front(channels)).to(memory_format=torch.channels_last)
            channels, self.cell = 32, patch // 4
        elif stem == "cnn":
            if patch % 8:
                raise ValueError(f"model.patch {patch} must be a multiple of 8 with model.patch_stem cnn")
            cnn = SpatialEncoder(channels, dim, frame_size)
            self.stem = nn.Sequential(*cnn.net, nn.GELU())
            channels, self.cell = dim, patch // 8
        elif stem == "linear":
            self.stem, self.cell = None, patch
        else:
            raise ValueError(f"unknown model.patch_stem '{stem}' (linear | conv | cnn)")
        if overlap and self.cell % 2:
            raise ValueError(f"model.patch_overlap needs an even patch (on the stem's map): {self.cell}")
        self.tubelet, self.patch, self.overlap = tubelet, patch, overlap
        self.grid = (h // patch, w // patch)
        k = 2 * self.cell if overlap else self.cell
        self.proj = nn.Conv3d(channels, dim, (tubelet, k, k), stride=(tubelet, self.cell, self.cell))
        self.pos_space = nn.Parameter(torch.zeros(1, 1, self.grid[0] * self.grid[1], dim))
        self.pos_time = nn.Parameter(torch.zeros(1, frames // tubelet, 1, dim))
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)
        # stochastic depth rising linearly to `drop_path` at the last block (DeiT's rule)
        rates = [drop_path * (i + 1) / depth for i in range(depth)] if depth else []
        self.blocks = nn.ModuleList([FactorisedBlock(dim, heads, drop_path=r, layer_scale=layer_scale) for r in rates])
        self.norm = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        t, p = self.tubelet, self.cell
        b = frames.shape[0]
        if self.stem is not None:
            x = rearrange(frames, "b f c h w -> (b f) c h w").contiguous(memory_format=torch.channels_last)
            frames = rearrange(self.stem(x), "(b f) c h w -> b f c h w", b=b)
        if self.overlap:  # 2p x 2p windows every p cells, zero-padded by p/2 at the borders: the
            # Conv3d as a 2-D convolution over each tubelet's frames stacked as channels (oneDNN's
            # fast path)
            x = rearrange(frames, "b (ft t) c h w -> (b ft) (t c) h w", t=t).contiguous(
                memory_format=torch.channels_last
            )
            weight = rearrange(self.proj.weight, "d c t kh kw -> d (t c) kh kw")
            x = rearrange(F.conv2d(x, weight, stride=p, padding=p // 2), "(b ft) d gh gw -> b ft (gh gw) d", b=b)
        else:  # the strided Conv3d as the matrix product it is (tubelets flattened in the weight's
            # (c, t, p, p) order): the same numbers, without the CPU's slow 3-D convolution path
            x = rearrange(frames, "b (ft t) c (gh p1) (gw p2) -> b ft (gh gw) (c t p1 p2)", t=t, p1=p, p2=p)
            x = F.linear(x, self.proj.weight.flatten(1))
        # bias and both position embeddings summed on the small (1, F/t, N, D) grid first: one
        # full-size addition instead of three
        x = x + (self.proj.bias + self.pos_space + self.pos_time)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
