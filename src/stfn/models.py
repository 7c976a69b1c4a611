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
from einops import rearrange
from torch import nn

from stfn.config import ModelParams
from stfn.covariates import CalendarFeatures, ForecastTerms
from stfn.encoders import SpatialEncoder, TemporalEncoder
from stfn.patches import SpacetimePatchEmbed


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
    # the cnn's first layer (SpatialEncoder); checkpoints without the key were trained with `maxpool`
    cnn_stem: Literal["unshuffle", "maxpool"] = "unshuffle"
    # resolved: the calendar periods the model sees (params' `auto` is resolved first)
    calendar: list[Literal["hour_of_day", "day_of_week", "day_of_year"]] = []
    # regression: the simple forecasts the output starts from besides the skip's linear map of the
    # window (stfn.base_forecast chooses them), and the target's own channel for persistence
    base_terms: list[Literal["climatology", "persistence"]] = []
    persistence_channel: int = -1

    # keys that the oldest checkpoints carry and this config no longer has
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("extra",)
    # settings a checkpoint may lack, with the value it was built with then: the cnn's maxpool
    # stem, the spacetime patches' linear embedding without LayerScale
    BEFORE_THE_KEY: ClassVar[dict[str, object]] = {
        "cnn_stem": "maxpool",
        "patch_stem": "linear",
        "patch_overlap": False,
        "layer_scale": 0.0,
        "drop_path": 0.0,
        "calendar": [],
        "base_terms": [],
    }

    @property
    def takes_time(self) -> bool:
        """The model's forward needs the samples' calendar coordinates."""
        return bool(self.calendar) or "climatology" in self.base_terms

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> STFNConfig:
        # keys a checkpoint written before them lacks: the behaviour it was trained with
        d = {**cls.BEFORE_THE_KEY, **d}
        return cls.model_validate({k: v for k, v in d.items() if k not in cls.LEGACY_KEYS})


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
        # known covariates: the calendar's encodings join the pooled vector before the head
        self.calendar = CalendarFeatures(cfg.calendar) if cfg.calendar else None
        self.calendar_proj = nn.Linear(self.calendar.size, d) if self.calendar is not None else None
        # the simple forecasts beside the skip's (climatology, persistence): fitted and frozen like it
        self.terms = ForecastTerms(cfg.base_terms, cfg.persistence_channel, cfg.n_outputs) if cfg.base_terms else None

    def fuse(self, series: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(H_f (B, F, D), frame features (B, F, N, D), Z (B, F, N, D))."""
        h = self.temporal(series)  # (B, T, D)
        h_f = h[:, self.frame_steps]  # (B, F, D): the state at each frame's own step, never later
        fm = self.spatial(frames)  # (B, F, N, D)
        return h_f, fm, self.align(h_f, fm)

    def forward(
        self, series: torch.Tensor, frames: torch.Tensor, time: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """`time`: (B, 3) calendar coordinates (stfn.transforms.calendar_coords), for a model that
        takes them (`cfg.takes_time`)."""
        if time is None and self.cfg.takes_time:
            raise ValueError("this model takes the samples' calendar coordinates (time), and none were given")
        h_f, fm, z = self.fuse(series, frames)
        values = self.value_norm(z + fm)
        bias = self.frame_bias(h_f).expand(-1, -1, z.shape[2])  # (B, F, N)
        pooled, alpha = self.pool(
            rearrange(z, "b f n d -> b (f n) d"),
            rearrange(values, "b f n d -> b (f n) d"),
            rearrange(bias, "b f n -> b (f n)"),
        )
        if self.calendar is not None:
            pooled = pooled + self.calendar_proj(self.calendar(time))
        out = self.head(pooled)
        if self.skip is not None:
            out = out + self.skip(torch.nan_to_num(series, nan=0.0).flatten(1))
        if self.terms is not None:
            out = out + self.terms(series, time)
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

    def forward(self, series: torch.Tensor, frames: torch.Tensor, time: torch.Tensor | None = None) -> dict:
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

    def forward(self, series: torch.Tensor, frames: torch.Tensor, time: torch.Tensor | None = None) -> dict:
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

    def forward(self, series: torch.Tensor, frames: torch.Tensor, time: torch.Tensor | None = None) -> dict:
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
