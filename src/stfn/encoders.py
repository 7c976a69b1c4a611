"""The encoders of the two modalities, as the STFN uses them by default.

    series (B, T, C_s) --TemporalEncoder--> H (B, T, D)      LSTM, GRU or a causal TCN
    frames (B, F, C, H, W) --SpatialEncoder--> (B, F, N, D)  a CNN, N = h*w grid cells

The experimental spacetime-patch encoder, the other choice of `model.spatial_encoder`, is in
`stfn.patches`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


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
    `maxpool` (the stem of older checkpoints) runs the 3x3 convolution on the full 32x32 frame and
    max-pools 2x2. The same multiply-adds, but the unshuffled stem never writes the 32x32x16
    map, whose convolution, pooling and their backward took half of a training step on the CPU:
    training runs 1.3-1.4x faster, and test accuracy on moving-digits is as high (docs,
    "Performance"). Then two 3x3 convolutions, each followed by a 2x2 max-pool. Max-pooling there
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
