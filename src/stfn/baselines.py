"""Reference forecasts computed beside every regression evaluation, on the same split.

- persistence: tomorrow = the last observed value of the target's own channel (`target.channel`)
- climatology: the training targets' mean for the same day of the year (a circular +-7-day
  window around it, so each day averages ~15 x the training years), from `timestamp`
- ridge: ridge regression on the flattened raw series window (missing readings filled with the
  channel's training mean); the penalty chosen on the validation split

Each needs only what the dataset declares; one that cannot be computed is left out with the
reason logged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

CLIMATOLOGY_HALF_WINDOW = 7  # days
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def persistence(series: np.ndarray, channel: int) -> np.ndarray:
    """The last finite reading of `channel` in each window (N, T, C) -> (N,); NaN if none."""
    x = series[:, :, channel]
    finite = np.isfinite(x)
    last = x.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
    out = x[np.arange(len(x)), last]
    return np.where(finite.any(axis=1), out, np.nan)


def climatology_table(doy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(366,) the mean of `labels` by day of year `doy` (0..365), over +- CLIMATOLOGY_HALF_WINDOW
    days (circular); a day with no label near it gets the overall mean."""
    days = 366
    sums, counts = np.zeros(days), np.zeros(days)
    np.add.at(sums, doy, labels)
    np.add.at(counts, doy, 1)
    kernel = np.ones(2 * CLIMATOLOGY_HALF_WINDOW + 1)
    wrap = lambda a: np.concatenate([a[-CLIMATOLOGY_HALF_WINDOW:], a, a[:CLIMATOLOGY_HALF_WINDOW]])  # noqa: E731
    s = np.convolve(wrap(sums), kernel, mode="valid")
    c = np.convolve(wrap(counts), kernel, mode="valid")
    return np.where(c > 0, s / np.maximum(c, 1), labels.mean())


def climatology(timestamps: pd.Series, labels: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Mean training target of the same day of year (+- CLIMATOLOGY_HALF_WINDOW days, circular)."""
    doy = pd.to_datetime(timestamps).dt.dayofyear.to_numpy() - 1  # 0..365
    return climatology_table(doy[train], labels[train])[doy]


def fit_ridge(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[Any, float]:
    """scikit-learn's Ridge on standardised columns of `x` (N, P), the penalty in RIDGE_ALPHAS with
    the lowest validation MAE (on the training rows when `val` selects none). Returns the fitted
    pipeline (StandardScaler -> Ridge) and the penalty. The ridge baseline and STFN's linear skip
    both use it, so they see the same preprocessing and the same penalty grid."""
    pick = val if np.asarray(val).any() else train
    best: tuple[float, float, Any] = (np.inf, 0.0, None)
    for alpha in RIDGE_ALPHAS:
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[train], y[train])
        mae = float(np.abs(model.predict(x[pick]) - y[pick]).mean())
        if mae < best[0]:
            best = (mae, alpha, model)
    return best[2], best[1]


def as_linear_map(model: Any) -> tuple[np.ndarray, float]:
    """(weights, bias) on the raw columns equal to a fitted StandardScaler -> Ridge pipeline."""
    scaler, ridge_ = model[0], model[-1]
    w = ridge_.coef_ / scaler.scale_
    return w, float(ridge_.intercept_ - w @ scaler.mean_)


def ridge(series: np.ndarray, labels: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, float]:
    """Predictions for every row from ridge regression on the flattened window (missing readings
    filled with the channel's training mean); the alpha with the lowest validation MAE."""
    n = len(series)
    fill = np.nan_to_num(np.nanmean(series[train], axis=(0, 1)))
    x = np.where(np.isfinite(series), series, fill[None, None, :]).reshape(n, -1).astype(np.float64)
    model, alpha = fit_ridge(x, labels, train, val)
    return model.predict(x), alpha


def regression_baselines(
    spec: Any, samples: pd.DataFrame, series: np.ndarray, split: np.ndarray
) -> dict[str, dict[str, Any]]:
    """{name: {"pred": predictions for every sample, "note": how}} for the baselines this
    dataset allows. `series` is the raw window (N, T, C); `split` the split of every sample."""
    labels = samples["label"].to_numpy(np.float64)
    train, val = split == "train", split == "val"
    out: dict[str, dict[str, Any]] = {}
    if spec.target.channel:
        c = spec.channel_names.index(spec.target.channel)
        out["persistence"] = {"pred": persistence(series, c), "note": f"last observed {spec.target.channel}"}
    else:
        log.info("no persistence baseline: dataset.yaml names no target.channel")
    if "timestamp" in samples.columns:
        out["climatology"] = {
            "pred": climatology(samples["timestamp"], labels, train),
            "note": f"training mean of the same day of year +-{CLIMATOLOGY_HALF_WINDOW} days",
        }
    else:
        log.info("no climatology baseline: samples.parquet has no timestamp column")
    pred, alpha = ridge(series, labels, train, val)
    out["ridge"] = {
        "pred": pred,
        "note": f"ridge on the flattened {series.shape[1]}x{series.shape[2]} window, alpha={alpha:g}",
    }
    return out
