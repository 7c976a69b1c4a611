"""The feature transforms, fitted on the training split (`stats`), applied to raw inputs: used by
the features stage and, unchanged, by a served model (numpy only, so both carry the same code)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd


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


# the calendar coordinates of a timestamp (columns of `calendar_coords`) and their periods
CALENDAR = {"hour_of_day": (0, 24.0), "day_of_week": (1, 7.0), "day_of_year": (2, 365.25)}


def calendar_coords(timestamps: Any) -> np.ndarray:
    """Timestamps (datetimes or ISO 8601 strings, N) -> (N, 3) float32: the hour of the day
    [0, 24), the day of the week [0, 7) (Monday 0) and the day of the year [0, 366), each with
    the fraction of its unit elapsed. A timestamp with a UTC offset keeps its wall-clock time (a
    calendar effect follows local time). Raises ValueError on what is not a timestamp."""
    values = pd.Series(np.asarray(timestamps).ravel())
    try:
        ts = pd.to_datetime(values, format="ISO8601" if values.dtype == object else None)
    except ValueError:  # naive and offset timestamps mixed: each keeps its own wall-clock time
        ts = pd.Series([pd.Timestamp(v).tz_localize(None) for v in values])
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_localize(None)
    if ts.isna().any():
        raise ValueError("a timestamp is missing")
    hour = (ts.dt.hour + ts.dt.minute / 60 + ts.dt.second / 3600).to_numpy(np.float64)
    day = hour / 24
    return np.stack([hour, ts.dt.dayofweek.to_numpy() + day, ts.dt.dayofyear.to_numpy() - 1 + day], axis=1).astype(
        np.float32
    )
