"""The feature transforms, fitted on the training split (`stats`), applied to raw inputs: used by
the features stage and, unchanged, by a served model (numpy only, so both carry the same code)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def center_series(series: np.ndarray) -> np.ndarray:
    """Remove each sample's per-channel median over the window: (N, T, C) -> (N, T, C).

    The whole window is observed at prediction time, so this uses no information the model
    would not have; it removes the sensors' slow offsets.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel stays NaN
        med = np.nanmedian(series, axis=1, keepdims=True)
    return series - np.nan_to_num(med)


def transform_series(series: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """(N, T, C) raw readings -> (N, T, C) float32 features; NaN (missing) stays NaN."""
    series = series.astype(np.float32)
    if stats.get("series_norm", "median") == "median":
        centred = center_series(series)
    else:
        centred = series - np.asarray(stats["series_mean"], np.float32)
    return (centred / np.asarray(stats["series_scale"], np.float32)).astype(np.float32)


def transform_frames(frames: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """(N, F, C, H, W) raw frames -> standardised float32."""
    mean = np.asarray(stats["frames_mean"], np.float32)[None, None, :, None, None]
    std = np.asarray(stats["frames_std"], np.float32)[None, None, :, None, None]
    return ((np.asarray(frames, np.float32) - mean) / std).astype(np.float32)
