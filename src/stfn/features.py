"""Features: normalisation fitted on the training split only, written as contiguous float32
arrays (`np.save`) and read back memory-mapped.

Layout of a features folder:
- `series.npy`  [N, T, C] float32, per-sample median removed, scaled by the train std; NaN kept
                (the model masks missing readings itself rather than zero-filling silently)
- `frames.npy`  [N, F, C, H, W] float32, standardised with the train mean/std per channel
- `labels.npy`  [N] int64 class index, or float32 standardised target for regression
- `calendar.npy` [N, 3] float32 calendar coordinates of the samples' timestamps (hour of day, day
                of week, day of year; `stfn.transforms.calendar_coords`), only when they have one
- `index.parquet` sample_id, split, row (and timestamp, when the samples have one)
- `stats.json`  the fitted statistics, the split and how it was made, the dataset's shapes
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn import defaults
from stfn.config import Paths
from stfn.data.contract import (
    FRAMES_FILE,
    DatasetSpec,
    NpyRows,
    assign_split,
    load_spec,
    open_frames,
    read_parquet,
    series_array,
    write_npy_chunks,
)
from stfn.fileio import atomic_dir
from stfn.transforms import calendar_coords, center_series, transform_frames, transform_series  # noqa: F401 (re-exported: models that carry no code of their own import them from here)

log = logging.getLogger(__name__)
CHUNK = 1024
CALENDAR_FILE = "calendar.npy"


def fit_stats(
    spec: DatasetSpec,
    series: np.ndarray,
    frames: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    series_norm: str = "auto",
) -> dict[str, Any]:
    """Normalisation statistics from the training rows only (`auto`: stfn.defaults' choice for the
    dataset's task)."""
    series_norm = defaults.value("data.series_norm", series_norm, spec.task)
    if series_norm not in ("median", "global"):
        raise ValueError(f"data.series_norm {series_norm!r}: expected 'auto', 'median' or 'global'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel gets mean 0, scale 1
        series_mean = np.nan_to_num(np.nanmean(series[train], axis=(0, 1)))
        centred = center_series(series[train]) if series_norm == "median" else series[train] - series_mean
        scale = np.nanstd(centred, axis=(0, 1))
    scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0)
    c = spec.frames.channels
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    rows = np.flatnonzero(train)
    for i in range(0, len(rows), CHUNK):
        block = np.asarray(frames[rows[i : i + CHUNK]], dtype=np.float64)  # (b, F, C, H, W)
        s1 += block.sum(axis=(0, 1, 3, 4))
        s2 += (block**2).sum(axis=(0, 1, 3, 4))
        count += block.shape[0] * block.shape[1] * block.shape[3] * block.shape[4]
    mean = s1 / max(count, 1)
    std = np.sqrt(np.maximum(s2 / max(count, 1) - mean**2, 1e-12))
    stats: dict[str, Any] = {
        "series_norm": series_norm,
        "series_mean": series_mean.tolist(),
        "series_scale": scale.tolist(),
        "frames_mean": mean.tolist(),
        "frames_std": np.where(std > 1e-6, std, 1.0).tolist(),
    }
    if spec.task == "regression":
        y = labels[train].astype(np.float64)
        stats["target_mean"], stats["target_std"] = float(y.mean()), float(y.std() or 1.0)
    return stats


def build_features(
    dataset_dir: Path,
    out_dir: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    series_norm: str = "auto",
) -> Path:
    """Read a validated dataset, fit normalisation on train, write the features folder."""
    spec = load_spec(dataset_dir)
    samples = read_parquet(dataset_dir, "samples.parquet", spec.name)
    if progress:
        progress(0, len(samples))
    series_long = read_parquet(dataset_dir, "series.parquet", spec.name)
    series = series_array(series_long, samples["sample_id"], spec)
    del series_long
    open_frames(dataset_dir, spec, len(samples))  # header, shape, dtype and size checked
    frames = NpyRows(Path(dataset_dir) / FRAMES_FILE)  # streamed in chunks: memory flat in N
    labels = samples["label"].to_numpy()
    labels = labels.astype(np.int64) if spec.task == "classification" else labels.astype(np.float32)
    split, how = assign_split(samples, spec, val_fraction, test_fraction, seed)
    for name in ("train", "val", "test"):
        if not (split == name).any():
            raise ValueError(
                f"{spec.name}: the split has no '{name}' samples ({how}); add samples or change the fractions"
            )
    stats = fit_stats(spec, series, frames, labels, split == "train", series_norm)
    if spec.task == "regression":
        labels = ((labels - stats["target_mean"]) / stats["target_std"]).astype(np.float32)
    n = len(samples)
    timed = "timestamp" in samples.columns
    with atomic_dir(Path(out_dir)) as tmp:
        np.save(tmp / "series.npy", np.ascontiguousarray(transform_series(series, stats)), allow_pickle=False)
        np.save(tmp / "labels.npy", labels, allow_pickle=False)

        def blocks():
            for i in range(0, n, CHUNK):
                yield transform_frames(frames[i : i + CHUNK], stats)
                if progress:
                    progress(min(i + CHUNK, n), n)

        write_npy_chunks(tmp / "frames.npy", frames.shape, np.float32, blocks())
        index = pd.DataFrame(
            {"sample_id": samples["sample_id"].astype(str), "split": split.astype(str), "row": np.arange(n)}
        )
        if timed:
            index["timestamp"] = pd.to_datetime(samples["timestamp"]).to_numpy()
            np.save(tmp / CALENDAR_FILE, calendar_coords(samples["timestamp"]), allow_pickle=False)
        index.to_parquet(tmp / Paths.FEATURES_INDEX, index=False)
        meta = {
            "dataset": spec.name,
            "task": spec.task,
            "spec": spec.model_dump(mode="json"),
            "split_method": how,
            "counts": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "stats": stats,
            "timestamp": timed,  # the model takes the samples' timestamps (and a served one, as ISO 8601)
        }
        (tmp / Paths.FEATURES_STATS).write_text(json.dumps(meta, indent=2))
    return Path(out_dir)


@dataclass
class FeatureSet:
    """A features folder opened memory-mapped."""

    folder: Path
    spec: DatasetSpec
    series: np.ndarray  # (N, T, C) float32
    frames: np.ndarray  # (N, F, C, H, W) float32, memmap
    labels: np.ndarray  # (N,)
    index: pd.DataFrame
    meta: dict[str, Any]
    calendar: np.ndarray | None = None  # (N, 3) calendar coordinates, when the samples have timestamps

    def rows(self, split: str) -> np.ndarray:
        return self.index.loc[self.index["split"] == split, "row"].to_numpy()

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta["stats"]


def load_features(folder: Path) -> FeatureSet:
    folder = Path(folder)
    if not (folder / Paths.FEATURES_STATS).is_file():
        raise FileNotFoundError(f"{folder}: no features here (run the featurize stage first)")
    meta = json.loads((folder / Paths.FEATURES_STATS).read_text())
    return FeatureSet(
        folder=folder,
        spec=DatasetSpec.model_validate(meta["spec"]),
        series=np.load(folder / "series.npy", mmap_mode="r", allow_pickle=False),
        frames=np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False),
        labels=np.load(folder / "labels.npy", allow_pickle=False),
        index=pd.read_parquet(folder / Paths.FEATURES_INDEX),
        meta=meta,
        calendar=np.load(folder / CALENDAR_FILE, allow_pickle=False) if (folder / CALENDAR_FILE).is_file() else None,
    )
