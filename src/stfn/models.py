"""The STFN (Spatial-Temporal Fusion Network) and its parts.

    series (B, T, C_s) --TemporalEncoder--> H (B, T, D)
    frames (B, F, C, H, W) --SpatialEncoder--> Fm (B, F, N, D)          N = h*w grid cells
    H at each frame's step (never a later one): H_f (B, F, D)
    Z = BilinearAlignment(H_f, Fm)                               (B, F, N, D)   low-rank bilinear (MFB)
    alpha = AttentionPooling(Z) + per-frame bias from H_f        (B, F*N), sums to 1
    P = sum alpha * LN(Z + Fm)                                   (B, D) -> head -> logits / value

Dimension letters: B batch, T series steps, C channels, F frames, H/W frame height/width,
N grid cells (h*w), D width. The model knows nothing about files, logging or MLflow.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stfn.config import ModelParams


class STFNConfig(ModelParams):
    """Everything needed to rebuild the model (stored in every checkpoint): the `model` section
    of params.yaml (inherited, one declaration of each setting) and the shapes of the data."""

    series_channels: int  # C_s
    frame_channels: int  # C of the frames
    frame_size: tuple[int, int]  # (H, W)
    frame_steps: list[int]  # series step at which each frame was taken
    steps: int  # T
    n_outputs: int  # classes, or 1 for regression
    task: Literal["classification", "regression"] = "classification"
    linear_skip: bool = False  # resolved: a built model has it or not (params' `auto` is resolved first)
    # the cnn's first layer (SpatialEncoder): `unshuffle` since #18; checkpoints without the key are `maxpool`
    cnn_stem: Literal["unshuffle", "maxpool"] = "unshuffle"

    # keys that checkpoints written before the house pass (#15) carry and this config dropped
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("extra",)
    # settings added later, as a checkpoint without them was built: the cnn stem before #18, the
    # spacetime patches before #19
    BEFORE_THE_KEY: ClassVar[dict[str, object]] = {
        "cnn_stem": "maxpool",
        "patch_stem": "linear",
        "patch_overlap": False,
        "layer_scale": 0.0,
        "drop_path": 0.0,
    }

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> STFNConfig:
        # keys a checkpoint written before them lacks: the behaviour it was trained with
        d = {**cls.BEFORE_THE_KEY, **d}
        return cls.model_validate({k: v for k, v in d.items() if k not in cls.LEGACY_KEYS})


class TemporalEncoder(nn.Module):
    """Sensor series -> one state per step. Missing readings (NaN) are masked: the encoder sees
    a zero value *and* a 0 in the mask channel, so 'missing' is never confused with 'zero'.
    Unidirectional, so H_t depends on steps <= t only."""

    def __init__(self, channels: int, dim: int, kind: str = "lstm"):
        super().__init__()
        self.inp = nn.Linear(2 * channels, dim)
        if kind == "tcn":
            self.rnn = CausalTCN(dim)
        elif kind in ("lstm", "gru"):
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](dim, dim, batch_first=True)
        else:
            raise ValueError(f"unknown model.temporal_encoder '{kind}' (lstm | gru | tcn)")

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        observed = torch.isfinite(series)  # (B, T, C)
        x = torch.where(observed, series, torch.zeros_like(series))
        x = torch.cat([x, observed.to(x.dtype)], dim=-1)  # (B, T, 2C)
        h = self.rnn(F.gelu(self.inp(x)))  # (B, T, D)
        return h[0] if isinstance(h, tuple) else h


class CausalTCN(nn.Module):
    """Temporal convolution network: residual blocks of dilated 1-D convolutions padded on the
    left only, so step t sees steps <= t (receptive field 1 + 2*(1+2+4+8) = 31 steps)."""

    def __init__(self, dim: int, kernel: int = 3, dilations: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        self.pads = [(kernel - 1) * d for d in dilations]
        self.convs = nn.ModuleList([nn.Conv1d(dim, dim, kernel, dilation=d) for d in dilations])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        for pad, conv, norm in zip(self.pads, self.convs, self.norms, strict=True):
            y = conv(F.pad(rearrange(norm(x), "b t d -> b d t"), (pad, 0)))
            x = x + F.gelu(rearrange(y, "b d t -> b t d"))
        return x


class SpatialEncoder(nn.Module):
    """Frames -> a grid of features per frame, with a learned embedding per grid cell.

    A 32x32 frame becomes a 4x4 grid whose cells each see a whole 8x8 digit. The first layer
    (`stem`) halves the resolution: `unshuffle` folds each 2x2 pixel block into 4 channels
    (PixelUnshuffle) and runs a 3x3 convolution on the 16x16 grid (receptive field 6 px);
    `maxpool` (the stem before #18) runs the 3x3 convolution on the full 32x32 frame and
    max-pools 2x2. The same multiply-adds, but the unshuffled stem never writes the 32x32x16
    map, whose convolution, pooling and their backward took half of a training step on the CPU:
    training runs 1.3-1.4x faster, and test accuracy on moving-digits is as high (README,
    Performance). Then two 3x3 convolutions, each followed by a 2x2 max-pool. Max-pooling there
    (rather than strided convolutions) makes a cell's features nearly invariant to where inside
    it the digit sits: on moving-digits it learns in 2 epochs instead of 4 and recognises unseen
    handwriting far better (test accuracy 0.97 vs 0.91 for stride-2 5x5 convolutions)."""

    def __init__(self, channels: int, dim: int, frame_size: tuple[int, int], stem: str = "unshuffle"):
        super().__init__()
        h, w = frame_size
        if h % 8 or w % 8:
            raise ValueError(f"frame size {frame_size} must be divisible by 8 for the cnn spatial encoder")
        self.net = nn.Sequential(*cnn_front(channels, stem), nn.Conv2d(32, dim, 3, padding=1), nn.MaxPool2d(2))
        # channels-last (NHWC) weights and inputs: oneDNN's convolutions, pools and their backward
        # run 1.7x faster on the CPU than in NCHW (a whole training step, measured); same numbers
        self.net.to(memory_format=torch.channels_last)
        self.grid = (h // 8, w // 8)
        self.tubelet = 1  # one feature map per frame
        self.pos = nn.Parameter(torch.zeros(1, 1, self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b = frames.shape[0]
        x = rearrange(frames, "b f c h w -> (b f) c h w").contiguous(memory_format=torch.channels_last)
        x = self.net(x)  # (B*F, D, h, w)
        x = rearrange(x, "(b f) d h w -> b f (h w) d", b=b)  # (B, F, N, D)
        return self.norm(F.gelu(x) + self.pos)


def cnn_front(channels: int, stem: str = "unshuffle") -> list[nn.Module]:
    """The cnn encoder's layers up to a quarter of the frame's size, 32 channels (its stem, a 3x3
    convolution, a 2x2 max-pool): SpatialEncoder's first layers and the patches' `conv` stem."""
    if stem == "unshuffle":
        first = [nn.PixelUnshuffle(2), nn.Conv2d(4 * channels, 16, 3, padding=1)]
    elif stem == "maxpool":  # pooling before the activation: 4x fewer GELUs
        first = [nn.Conv2d(channels, 16, 3, padding=1), nn.MaxPool2d(2)]
    else:
        raise ValueError(f"unknown cnn stem '{stem}' (unshuffle | maxpool)")
    return [*first, nn.GELU(), nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2), nn.GELU()]


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


def build_spatial(cfg: STFNConfig) -> nn.Module:
    if cfg.spatial_encoder == "cnn":
        return SpatialEncoder(cfg.frame_channels, cfg.dim, tuple(cfg.frame_size), cfg.cnn_stem)
    if cfg.spatial_encoder == "patches":
        return SpacetimePatchEmbed(
            cfg.frame_channels,
            cfg.dim,
            tuple(cfg.frame_size),
            len(cfg.frame_steps),
            tubelet=cfg.tubelet,
            patch=cfg.patch,
            depth=cfg.patch_depth,
            heads=cfg.heads,
            stem=cfg.patch_stem,
            drop_path=cfg.drop_path,
            layer_scale=cfg.layer_scale,
            overlap=cfg.patch_overlap,
        )
    raise ValueError(f"unknown model.spatial_encoder '{cfg.spatial_encoder}' (cnn | patches)")


class BilinearAlignment(nn.Module):
    """Low-rank bilinear (MFB) fusion of a temporal state with every grid cell of its frame:
    Z = LN(SumPool_k(U h * V f)) (LayerNorm in place of MFB's signed square root, whose
    gradient explodes near zero), (B, F, D) x (B, F, N, D) -> (B, F, N, D)."""

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.factor = factor
        self.u = nn.Linear(dim, dim * factor)
        self.v = nn.Linear(dim, dim * factor)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        z = self.u(h)[:, :, None, :] * self.v(f)  # (B, F, N, D*k)
        z = rearrange(z, "b f n (d k) -> b f n d k", k=self.factor).sum(-1)  # (B, F, N, D)
        return self.norm(z)


class FiLMAlignment(nn.Module):
    """Feature-wise modulation of each cell by its frame's temporal state (the seed design's
    "weighted average"): Z = LN((1 + gamma(h)) * f + beta(h))."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma_beta = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(h)[:, :, None, :].chunk(2, dim=-1)  # (B, F, 1, D) each
        return self.norm((1 + gamma) * f + beta)


class GatedAlignment(nn.Module):
    """Gated multimodal unit (GMU): a learned per-feature gate averages the two modalities,
    Z = LN(g * tanh(W_h h) + (1 - g) * tanh(W_f f)), g = sigmoid(W_g [h; f])."""

    def __init__(self, dim: int):
        super().__init__()
        self.wh, self.wf = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = h[:, :, None, :].expand_as(f)  # (B, F, N, D)
        g = torch.sigmoid(self.gate(torch.cat([h, f], dim=-1)))
        return self.norm(g * torch.tanh(self.wh(h)) + (1 - g) * torch.tanh(self.wf(f)))


class FullBilinearAlignment(nn.Module):
    """Full bilinear product z_o = h^T W_o f (D^3 weights: for small D only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim, dim) / dim)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        hw = torch.einsum("bfi,oij->bfoj", h, self.weight)  # (B, F, D_out, D): h first, cheaper
        return self.norm(torch.einsum("bfoj,bfnj->bfno", hw, f) + self.bias)


def build_alignment(kind: str, dim: int, factor: int) -> nn.Module:
    if kind == "mfb":
        return BilinearAlignment(dim, factor)
    if kind == "film":
        return FiLMAlignment(dim)
    if kind == "gmu":
        return GatedAlignment(dim)
    if kind == "bilinear":
        if dim > 96:
            raise ValueError(f"model.alignment 'bilinear' keeps D^3 weights: model.dim {dim} is too large (<= 96)")
        return FullBilinearAlignment(dim)
    raise ValueError(f"unknown model.alignment '{kind}' (mfb | film | gmu | bilinear)")


class AttentionPooling(nn.Module):
    """Gated attention pooling: alpha ∝ exp(w^T (tanh(V z) ⊙ sigmoid(U z)) + bias).

    With `heads` > 1 each head has its own w; the heads' pooled values are concatenated and
    projected back to E, and the returned weights are the heads' mean (still summing to 1)."""

    def __init__(self, dim: int, hidden: int, heads: int = 1, value_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, heads)
        e = value_dim or dim
        self.merge = nn.Linear(heads * e, e) if heads > 1 else nn.Identity()

    def forward(
        self, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (B, M, D), values (B, M, E), bias (B, M) -> pooled (B, E), alpha (B, M)."""
        score = self.w(torch.tanh(self.v(keys)) * torch.sigmoid(self.u(keys)))  # (B, M, heads)
        if bias is not None:
            score = score + bias[..., None]
        alpha = torch.softmax(score, dim=1)  # over the M positions, per head
        pooled = torch.einsum("bmk,bme->bke", alpha, values)  # (B, heads, E)
        return self.merge(rearrange(pooled, "b k e -> b (k e)")), alpha.mean(dim=-1)


def grid_attention(alpha: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Attention weights over space-time positions as maps: (B, F*h*w) -> (B, F, h, w)."""
    return rearrange(alpha, "b (f h w) -> b f h w", h=grid[0], w=grid[1])


class STFN(nn.Module):
    """Spatial-Temporal Fusion Network. `forward` returns {"output", "attention" (B, F, h, w)}."""

    def __init__(self, cfg: STFNConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.temporal = TemporalEncoder(cfg.series_channels, d, cfg.temporal_encoder)
        self.spatial = build_spatial(cfg)
        self.align = build_alignment(cfg.alignment, d, cfg.mfb_factor)
        self.value_norm = nn.LayerNorm(d)
        self.frame_bias = nn.Linear(d, 1)
        self.pool = AttentionPooling(d, cfg.attention_hidden, cfg.attention_heads)
        self.head = _head(d, d, cfg.n_outputs, cfg.dropout)
        # LSTNet's "autoregressive highway"; `fit` fits it as the ridge baseline (scikit-learn) and freezes it,
        # so the fusion learns what the linear forecast misses
        self.skip = nn.Linear(cfg.steps * cfg.series_channels, cfg.n_outputs) if cfg.linear_skip else None
        # each frame (or tubelet of t frames) is aligned with the series step at which it ends
        steps = cfg.frame_steps[self.spatial.tubelet - 1 :: self.spatial.tubelet]
        self.register_buffer("frame_steps", torch.as_tensor(steps, dtype=torch.long), persistent=False)

    def fuse(self, series: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_f (B, F, D), frame features (B, F, N, D), Z (B, F, N, D))."""
        h = self.temporal(series)  # (B, T, D)
        h_f = h[:, self.frame_steps]  # (B, F, D): the state at each frame's own step, never later
        fm = self.spatial(frames)  # (B, F, N, D)
        return h_f, fm, self.align(h_f, fm)

    def forward(self, series: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        h_f, fm, z = self.fuse(series, frames)
        values = self.value_norm(z + fm)
        bias = self.frame_bias(h_f).expand(-1, -1, z.shape[2])  # (B, F, N)
        pooled, alpha = self.pool(
            rearrange(z, "b f n d -> b (f n) d"),
            rearrange(values, "b f n d -> b (f n) d"),
            rearrange(bias, "b f n -> b (f n)"),
        )
        out = self.head(pooled)
        if self.skip is not None:
            out = out + self.skip(torch.nan_to_num(series, nan=0.0).flatten(1))
        return {"output": out, "attention": grid_attention(alpha, self.spatial.grid)}


def _head(d_in: int, d: int, n_out: int, dropout: float, hidden_layers: int = 1) -> nn.Sequential:
    """LayerNorm -> (Linear -> GELU) x hidden_layers -> Dropout -> Linear. The one-branch
    baselines use 2 hidden layers so that their size stays within 2x of STFN's."""
    layers: list[nn.Module] = [nn.LayerNorm(d_in)]
    for i in range(hidden_layers):
        layers += [nn.Linear(d_in if i == 0 else d, d), nn.GELU()]
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(d, n_out))


class TimeOnly(nn.Module):
    """Ablation: the series alone. TemporalEncoder -> gated attention over steps -> head."""

    def __init__(self, cfg: STFNConfig):
        super().__init__()
        self.cfg = cfg
        self.temporal = TemporalEncoder(cfg.series_channels, cfg.dim, cfg.temporal_encoder)
        self.pool = AttentionPooling(cfg.dim, cfg.attention_hidden)
        self.head = _head(cfg.dim, 2 * cfg.dim, cfg.n_outputs, cfg.dropout, hidden_layers=2)

    def forward(self, series: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.temporal(series)  # (B, T, D)
        pooled, alpha = self.pool(h, h)
        return {"output": self.head(pooled), "time_attention": alpha}


class SpaceOnly(nn.Module):
    """Ablation: the frames alone. SpatialEncoder -> gated attention over F*N cells -> head."""

    def __init__(self, cfg: STFNConfig):
        super().__init__()
        self.cfg = cfg
        self.spatial = build_spatial(cfg)
        self.pool = AttentionPooling(cfg.dim, cfg.attention_hidden)
        self.head = _head(cfg.dim, 2 * cfg.dim, cfg.n_outputs, cfg.dropout, hidden_layers=2)

    def forward(self, series: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        fm = rearrange(self.spatial(frames), "b f n d -> b (f n) d")
        pooled, alpha = self.pool(fm, fm)
        return {"output": self.head(pooled), "attention": grid_attention(alpha, self.spatial.grid)}


class LateConcat(nn.Module):
    """Ablation: late fusion. Pooled H || pooled frame features -> MLP head; the two branches
    never see each other before pooling, so *when* cannot select *where*."""

    def __init__(self, cfg: STFNConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.temporal = TemporalEncoder(cfg.series_channels, d, cfg.temporal_encoder)
        self.spatial = build_spatial(cfg)
        self.time_pool = AttentionPooling(d, cfg.attention_hidden)
        self.space_pool = AttentionPooling(d, cfg.attention_hidden)
        self.head = _head(2 * d, 2 * d, cfg.n_outputs, cfg.dropout)

    def forward(self, series: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.temporal(series)
        fm = rearrange(self.spatial(frames), "b f n d -> b (f n) d")
        ph, _ = self.time_pool(h, h)
        pf, alpha = self.space_pool(fm, fm)
        return {
            "output": self.head(torch.cat([ph, pf], dim=-1)),
            "attention": grid_attention(alpha, self.spatial.grid),
        }


VARIANTS = {"stfn": STFN, "time_only": TimeOnly, "space_only": SpaceOnly, "late_concat": LateConcat}


def build_model(cfg: STFNConfig, seed: int | None = None) -> nn.Module:
    """The model `cfg.variant` names (STFN or an ablation baseline), seeded."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"unknown model.variant '{cfg.variant}' ({' | '.join(VARIANTS)})")
    if seed is not None:
        torch.manual_seed(seed)
    return VARIANTS[cfg.variant](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
