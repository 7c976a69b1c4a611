"""The simple forecast a regression model starts from, chosen on the validation split.

Candidates, each fitted on the training rows only, in the model's own units (the normalised
series window with missing readings at 0 = the channel's training mean, the standardised target):

- `ridge`: ridge regression on the flattened window (the ridge baseline's `fit_ridge`)
- `climatology`: the training targets' mean for the day of the year (the climatology baseline's
  table), when the samples have timestamps
- `persistence`: the last finite reading of the target's own channel (`target.channel`), when
  the series keep their level (`data.series_norm: global`)
- `combination`: ridge regression on the window and the other two forecasts as columns

The one with the lowest validation MAE becomes the model's frozen start (its `skip` and
`terms`), and training keeps an epoch only when it beats that start on validation. The choice,
every candidate's validation MAE (in the target's unit) and the climatology table travel in the
checkpoint: the table is a buffer of the model, the rest in `FitResult.base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from stfn.baselines import as_linear_map, climatology_table, fit_ridge, persistence
from stfn.features import FeatureSet


@dataclass
class Base:
    """One candidate: its name, the model's terms it needs, its weights, its validation MAE."""

    name: str
    terms: list[str]
    window: np.ndarray  # (T*C,) weights of the flattened window (zeros when unused)
    bias: float
    term_weights: np.ndarray  # (len(terms),)
    val_mae: float  # in the target's unit
    climatology: np.ndarray | None = None  # (366,) standardised target by day of year
    scores: dict[str, float] = field(default_factory=dict)  # every candidate's val MAE (filled on the choice)

    def record(self) -> dict[str, Any]:
        """What a run logs: the choice and every candidate's validation MAE."""
        return {"choice": self.name, "val_mae": {k: round(v, 6) for k, v in self.scores.items()}}


def _last_finite(x: np.ndarray) -> np.ndarray:
    """The last finite value of each row of (N, T); 0 where none (as covariates.last_finite): the
    persistence baseline's own reading, a row without one at the channel's training mean (0)."""
    return np.nan_to_num(persistence(np.asarray(x)[:, :, None], 0))


def candidates(fs: FeatureSet, train_rows: np.ndarray, val_rows: np.ndarray) -> list[Base]:
    """Every candidate the dataset allows, fitted on `train_rows`, scored on `val_rows`."""
    rows = np.concatenate([train_rows, val_rows])
    is_train = np.arange(len(rows)) < len(train_rows)
    is_val = ~is_train
    x = np.nan_to_num(np.asarray(fs.series[rows], np.float64)).reshape(len(rows), -1)
    y = fs.labels[rows].astype(np.float64)
    unit = float(fs.stats.get("target_std", 1.0))

    def mae(pred: np.ndarray) -> float:
        return float(np.abs(pred[is_val] - y[is_val]).mean()) * unit

    zeros = np.zeros(x.shape[1])
    fitted, _ = fit_ridge(x, y, is_train, is_val)
    w, b = as_linear_map(fitted)
    out = [Base("ridge", [], w, b, np.zeros(0), mae(fitted.predict(x)))]
    columns: dict[str, np.ndarray] = {}
    table = None
    if fs.calendar is not None:
        doy = np.floor(fs.calendar[rows, 2]).astype(int).clip(0, 365)
        table = climatology_table(doy[is_train], y[is_train])
        columns["climatology"] = table[doy]
        out.append(Base("climatology", ["climatology"], zeros, 0.0, np.ones(1), mae(table[doy]), table))
    spec, st = fs.spec, fs.stats
    if spec.target.channel and st.get("series_norm") == "global":
        c = spec.channel_names.index(spec.target.channel)
        columns["persistence"] = p = _last_finite(np.asarray(fs.series[rows, :, c], np.float64))
        # the raw reading (p * scale + mean) in the standardised target's units
        a = st["series_scale"][c] / st["target_std"]
        b0 = (st["series_mean"][c] - st["target_mean"]) / st["target_std"]
        out.append(Base("persistence", ["persistence"], zeros, b0, np.array([a]), mae(a * p + b0)))
    if columns:
        xc = np.concatenate([x, np.stack(list(columns.values()), axis=1)], axis=1)
        fitted, _ = fit_ridge(xc, y, is_train, is_val)
        wc, bc = as_linear_map(fitted)
        k = len(columns)
        out.append(Base("combination", list(columns), wc[:-k], bc, wc[-k:], mae(fitted.predict(xc)), table))
    return out


def choose(fs: FeatureSet, train_rows: np.ndarray, val_rows: np.ndarray) -> Base:
    """The candidate with the lowest validation MAE (the simpler one on a tie: ridge first)."""
    found = candidates(fs, train_rows, val_rows)
    best = min(found, key=lambda c: c.val_mae)
    best.scores = {c.name: c.val_mae for c in found}
    return best


def persistence_channel(fs: FeatureSet) -> int:
    spec = fs.spec
    return spec.channel_names.index(spec.target.channel) if spec.target.channel else -1


def apply(model: nn.Module, base: Base) -> None:
    """Set the model's frozen start to `base` and zero the head's last layer: training starts
    from the simple forecast and the fusion learns what it misses."""
    with torch.no_grad():
        model.skip.weight.copy_(torch.as_tensor(base.window[None], dtype=model.skip.weight.dtype))
        model.skip.bias.fill_(base.bias)
        if model.terms is not None:
            model.terms.weight.weight.copy_(torch.as_tensor(base.term_weights[None], dtype=torch.float32))
            if base.climatology is not None:
                model.terms.climatology.copy_(torch.as_tensor(base.climatology, dtype=torch.float32))
        last = model.head[-1]
        last.weight.zero_()
        last.bias.zero_()
    model.skip.requires_grad_(False)
    if model.terms is not None:
        model.terms.requires_grad_(False)
