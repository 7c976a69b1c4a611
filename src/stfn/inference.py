"""The model at prediction time: what a registered model carries in its folder (MLflow's
`code_paths`) and runs where it is served, so it imports nothing of ours beyond `models` and
`config` and nothing third-party beyond torch, numpy, einops, pyyaml and pydantic.

- the feature transforms fitted on train (`stats`, applied by `stfn.transforms`) on raw inputs
- loading a checkpoint, batched forward passes
- `Predictor`: raw inputs of the dataset contract -> class probabilities or values, refusing
  input it cannot take with an `InputError` that names the input and what was expected
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stfn.models import STFNConfig, build_model
from stfn.transforms import calendar_coords, transform_frames, transform_series


class InputError(ValueError):
    """A request the model cannot take; the message names the input and what was expected."""


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    payload = torch.load(path, map_location=device, weights_only=True)
    model = build_model(STFNConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


@torch.no_grad()
def predict_arrays(
    model: nn.Module,
    series: np.ndarray,
    frames: np.ndarray,
    batch_size: int = 256,
    device: torch.device | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    time: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model outputs (logits or standardised values) and attention maps (None without);
    `time`: the samples' calendar coordinates, for a model that takes them;
    `on_batch(done, total)` after each batch, in samples."""
    device = device or next(model.parameters()).device
    model.eval()
    outs, atts = [], []
    for i in range(0, len(series), batch_size):
        s = torch.as_tensor(np.asarray(series[i : i + batch_size]), device=device)
        f = torch.as_tensor(np.asarray(frames[i : i + batch_size]), device=device)
        t = torch.as_tensor(np.asarray(time[i : i + batch_size]), device=device) if time is not None else None
        res = model(s, f, t) if t is not None else model(s, f)
        outs.append(res["output"].float().cpu().numpy())
        if "attention" in res:  # (B, F, h, w); the time-only baseline has none
            atts.append(res["attention"].float().cpu().numpy())
        if on_batch:
            on_batch(min(i + batch_size, len(series)), len(series))
    return np.concatenate(outs), (np.concatenate(atts) if atts else None)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (float32) from logits: torch's softmax in float64 (the model already
    needs torch; SciPy's, which the evaluation uses, agrees to 1e-15 and would add a dependency)."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float64)), dim=-1).numpy().astype(np.float32)


class Predictor:
    """A trained model and its features' metadata (`spec`, `stats`, `task`): raw inputs -> outputs."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        self.model, self.meta = model, meta
        spec = meta["spec"]
        fr = spec["frames"]
        self.task: str = meta["task"]
        self.series_shape = (spec["series"]["steps"], len(spec["series"]["channels"]))
        self.frames_shape = (fr["count"], fr["channels"], fr["height"], fr["width"])
        self.frames_dtype = np.dtype(fr["dtype"])
        self.channels = [c["name"] for c in spec["series"]["channels"]]
        self.classes = list(spec["target"].get("classes") or [])
        self.takes_time = bool(meta.get("timestamp"))  # trained on timestamped samples

    @classmethod
    def load(cls, checkpoint: Path, meta: dict[str, Any]) -> Predictor:
        return cls(load_checkpoint(checkpoint)[0], meta)

    def expected(self, name: str) -> str:
        if name == "timestamp":
            return "(N,) ISO 8601 date-times, one a sample (e.g. 2024-03-01T00:00:00)"
        if name == "series":
            t, c = self.series_shape
            return f"(N, {t}, {c}) float32 readings ({', '.join(self.channels)}; null or NaN for a missing one)"
        return f"(N, {', '.join(map(str, self.frames_shape))}) {self.frames_dtype} frames" + (
            " with values 0..255" if self.frames_dtype == np.uint8 else " with finite values"
        )

    def check(self, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """The inputs as arrays of the trained shapes, or an InputError naming what is wrong."""
        if not isinstance(inputs, dict):
            raise InputError(f"inputs: expected named inputs 'series' {self.expected('series')} and 'frames'")
        missing = [k for k in ("series", "frames") if k not in inputs]
        if missing:
            raise InputError("; ".join(f"'{k}' is missing: expected {self.expected(k)}" for k in missing))
        series = self._array("series", inputs["series"], np.float32)
        frames = self._array("frames", inputs["frames"], None)
        if series.shape[1:] != self.series_shape or series.ndim != 3:
            raise InputError(f"'series' has shape {series.shape}: expected {self.expected('series')}")
        if frames.shape[1:] != self.frames_shape or frames.ndim != 5:
            raise InputError(f"'frames' has shape {frames.shape}: expected {self.expected('frames')}")
        if len(series) != len(frames):
            raise InputError(f"'series' has {len(series)} samples and 'frames' {len(frames)}: expected as many")
        if np.isinf(series).any():
            raise InputError(f"'series' holds an infinite reading: expected {self.expected('series')}")
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            raise InputError(f"'frames' holds NaN or infinite values: expected {self.expected('frames')}")
        if self.frames_dtype == np.uint8 and frames.dtype != np.uint8:
            if frames.size and (frames.min() < 0 or frames.max() > 255 or (np.round(frames) != frames).any()):
                lo, hi = float(frames.min()), float(frames.max())
                raise InputError(f"'frames' values range {lo:g}..{hi:g}: expected {self.expected('frames')}")
        return series, frames.astype(self.frames_dtype, copy=False)

    def time(self, inputs: dict[str, Any], n: int) -> np.ndarray | None:
        """The calendar coordinates of `inputs['timestamp']` for a model trained with timestamps
        (None for one without), or an InputError naming what is wrong."""
        if not self.takes_time:
            return None
        if "timestamp" not in inputs:
            raise InputError(f"'timestamp' is missing: expected {self.expected('timestamp')}")
        try:
            coords = calendar_coords(inputs["timestamp"])
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"'timestamp' is not a date-time ({exc}): expected {self.expected('timestamp')}") from None
        if len(coords) != n:
            raise InputError(
                f"'timestamp' has {len(coords)} values for {n} samples: expected {self.expected('timestamp')}"
            )
        return coords

    def _array(self, name: str, value: Any, dtype: type | None) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"'{name}' is not a numeric array ({exc}): expected {self.expected(name)}") from None
        if arr.dtype.kind not in "biuf":
            if arr.dtype == object:  # JSON nulls in frames, ragged lists
                try:
                    arr = arr.astype(np.float64)
                except (TypeError, ValueError):
                    raise InputError(f"'{name}' is ragged or not numeric: expected {self.expected(name)}") from None
            else:
                raise InputError(f"'{name}' has dtype {arr.dtype}: expected {self.expected(name)}")
        return arr

    def predict(self, inputs: Any) -> np.ndarray:
        """(N, K) class probabilities, or (N,) values in the target's unit; float32."""
        series, frames = self.check(inputs)
        time = self.time(inputs, len(series))
        stats = self.meta["stats"]
        out, _ = predict_arrays(self.model, transform_series(series, stats), transform_frames(frames, stats), time=time)
        if self.task == "classification":
            return probabilities(out)
        return (out[:, 0] * stats["target_std"] + stats["target_mean"]).astype(np.float32)
