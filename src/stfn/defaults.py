"""Settings left `auto` in params.yaml, resolved for the dataset being run, with the reason.

A setting a user gives (params.yaml, its `datasets.<name>` section, `--set`) is used as given;
one left `auto` is chosen here from the dataset's task, once, before featurize and train, and the
choice is printed in the run summary, logged to MLflow (params and `stfn.auto.*` tags) and
recorded with the registered version. The rules, and the measurements behind them (docs,
"Your own data"):

- `data.series_norm`: `global` for regression, `median` for classification. A regression target
  is a level in the channels' own units (tomorrow's wind, tomorrow's PM10): removing each sample's
  median erases the very level it predicts. A class is a pattern in the window (a spike, a shape):
  each sample's offset and drift are noise to it.
- `model.linear_skip`: on for regression, off for classification. The model starts from the best
  simple forecast on validation (ridge, climatology, persistence or their combination:
  `stfn.base_forecast`), frozen, and training keeps an epoch only when it beats that start on
  validation, so by default the fusion can add to the simple forecast but never fall below it on
  validation. A classifier has no such forecast to start from.
- `train.epochs`: about `STEP_BUDGET` optimizer steps, at least `MIN_EPOCHS` epochs; early stopping
  on the validation metric ends a run that has converged. A budget in steps rather than epochs
  scales with the data: a small dataset gets as many updates as a large one (a fixed 5 epochs is
  940 steps on moving-digits but 330 on a 4,200-sample video dataset, which stopped at 0.66
  accuracy while still climbing, and 0.99 after 15 epochs).
- `train.patience`: a fifth of the epochs, at least 4: on a small dataset an epoch is a few
  steps, and a validation split of a few dozen samples is noisy from one epoch to the next.
- `model.calendar`: the periods of the training timestamps' calendar (hour of day, day of week,
  day of year) that the record can show: sampled at least `PER_PERIOD` times a period (the median
  spacing at most a quarter of it) and spanning at least `SPANNED` periods. Daily readings get the
  day of the week and of the year, monthly ones the day of the year, hourly ones all three; a
  dataset without a `timestamp` column none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stfn.config import Params, Paths, TrainParams
from stfn.data.contract import SAMPLES_FILE, assign_split, load_spec, read_parquet

AUTO = "auto"
TAG_PREFIX = "stfn.auto."

_RULES: dict[str, dict[str, tuple[Any, str]]] = {
    "data.series_norm": {
        "regression": ("global", "regression: the target is a level, so the series keep theirs"),
        "classification": ("median", "classification: each sample's offset is removed, the pattern kept"),
    },
    "model.linear_skip": {
        "regression": (True, "regression: starts from the best simple forecast on val; training must beat it"),
        "classification": (False, "classification: no linear forecast to start from"),
    },
}
# The training budget. ~1000 optimizer steps is where the datasets measured stop improving:
# moving-digits (12,000 training samples, 188 steps an epoch) by its 5th epoch (940 steps), a
# 4,200-sample video dataset by its 14th (920), a 394-sample yearly regression record by its 35th
# (245); early stopping ends the runs that get there sooner.
STEP_BUDGET = 1000
MIN_EPOCHS = 5  # a large dataset still sees every sample a few times
MAX_EPOCHS = 500  # a dataset of one batch stops here
MIN_PATIENCE = 4
BUDGET_KEYS = ("train.epochs", "train.patience")
DATA_KEYS = ("model.calendar",)
KEYS = (*_RULES, *BUDGET_KEYS, *DATA_KEYS)
PERIOD_DAYS = {"hour_of_day": 1.0, "day_of_week": 7.0, "day_of_year": 365.25}
PER_PERIOD = 4  # readings a period, at least (the median spacing): a sine and cosine need more than 2
SPANNED = 2  # periods the training record covers, at least: one cycle alone cannot tell cycle from trend


@dataclass(frozen=True)
class Choice:
    key: str
    value: Any
    given: bool  # True: the user's value; False: chosen here
    reason: str

    def line(self) -> str:
        shown = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.key}={shown} ({'given' if self.given else 'auto'}: {self.reason})"


def value(key: str, given: Any, task: str) -> Any:
    """One setting's value for `task`: `given` unless it is `auto` (for code that holds a single
    section, e.g. a ModelParams, rather than the whole Params)."""
    return _RULES[key][task][0] if given == AUTO else given


def _get(params: Params, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(params, section), name)


def epochs_for(n_train: int, batch_size: int) -> tuple[int, str]:
    """`train.epochs: auto` for `n_train` training samples in batches of `batch_size`, and why."""
    steps = max(1, math.ceil(n_train / batch_size))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, round(STEP_BUDGET / steps)))
    return epochs, (
        f"{n_train} training samples, {steps} steps an epoch: about {STEP_BUDGET} optimizer steps, "
        f"at least {MIN_EPOCHS} epochs; early stopping on validation may end it sooner"
    )


def patience_for(epochs: int) -> tuple[int, str]:
    """`train.patience: auto` for a run of `epochs` epochs, and why."""
    return max(MIN_PATIENCE, math.ceil(epochs / 5)), f"a fifth of {epochs} epochs, at least {MIN_PATIENCE}"


def _days(days: float) -> str:
    if days < 1:
        return f"{days * 24:g} h"
    return f"{days:g} days" if days < 10 else f"{days:,.0f} days"


def calendar_for(timestamps: Any) -> tuple[list[str], str]:
    """`model.calendar: auto` for the training samples' `timestamps` (None: the dataset has none),
    and why."""
    if timestamps is None:
        return [], "the samples have no timestamp column"
    t = np.unique(pd.to_datetime(pd.Series(np.asarray(timestamps).ravel())).dropna().to_numpy())
    if len(t) < 2:
        return [], "fewer than two distinct training timestamps"
    day = np.timedelta64(1, "D")
    spacing = float(np.median(np.diff(t)) / day)
    span = float((t[-1] - t[0]) / day)
    chosen = [p for p, d in PERIOD_DAYS.items() if spacing <= d / PER_PERIOD and span >= SPANNED * d]
    return chosen, (
        f"training timestamps every {_days(spacing)} (median) over {_days(span)}: the periods sampled "
        f"{PER_PERIOD}+ times a period and seen {SPANNED}+ times"
    )


def _by_task(params: Params, task: str) -> list[tuple[str, Any, str | None]]:
    """(key, value, reason) of the settings chosen by the task; reason None: the value was given."""
    out: list[tuple[str, Any, str | None]] = []
    for key, rules in _RULES.items():
        value = _get(params, key)
        out.append((key, *rules[task]) if value == AUTO else (key, value, None))
    return out


def _budget(tp: TrainParams, n_train: int | None) -> list[tuple[str, Any, str | None]]:
    """(key, value, reason) of the training budget; reason None: the value was given."""
    out: list[tuple[str, Any, str | None]] = []
    epochs = tp.epochs
    if epochs == AUTO:
        if n_train is None:
            raise ValueError("train.epochs is auto: the number of training samples is needed to resolve it")
        epochs, why = epochs_for(n_train, tp.batch_size)
        out.append(("train.epochs", epochs, why))
    else:
        out.append(("train.epochs", epochs, None))
    if tp.patience == AUTO:
        out.append(("train.patience", *patience_for(epochs)))
    else:
        out.append(("train.patience", tp.patience, None))
    return out


def _by_data(params: Params, timestamps: Any) -> list[tuple[str, Any, str | None]]:
    """(key, value, reason) of the settings chosen from the data itself; reason None: given."""
    if params.model.calendar == AUTO:
        return [("model.calendar", *calendar_for(timestamps))]
    return [("model.calendar", params.model.calendar, None)]


def resolve(
    params: Params, task: str, n_train: int | None = None, timestamps: Any = None
) -> tuple[Params, list[Choice]]:
    """`params` with every `auto` setting replaced by its value for `task` (and, for the training
    budget, `n_train` training samples; for the calendar, the training `timestamps`, None for a
    dataset without), and the choices."""
    choices, updates = [], {}
    given = "set in params.yaml, a datasets section or --set"
    rules = _by_task(params, task) + _budget(params.train, n_train) + _by_data(params, timestamps)
    for key, value, reason in rules:
        if reason is None:
            choices.append(Choice(key, value, True, given))
        else:
            updates[key] = value
            choices.append(Choice(key, value, False, reason))
    if not updates:
        return params, choices
    sections = {}
    for key, value in updates.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    resolved = params.model_copy(
        update={s: getattr(params, s).model_copy(update=v) for s, v in sections.items()}, deep=True
    )
    return resolved, choices


def for_dataset(params: Params, paths: Paths) -> tuple[Params, list[Choice]]:
    """`resolve` for the run's dataset: its task (dataset.yaml) and, for the training budget, its
    number of training samples (samples.parquet, split as featurize splits it). Nothing to
    resolve, nothing read: a call on resolved params is free."""
    if all(_get(params, key) != AUTO for key in KEYS):
        return resolve(params, "regression")  # every value given: the task is not consulted
    folder = paths.dataset_dir(params.data.dataset)
    spec = load_spec(folder)
    n_train = timestamps = None
    if params.train.epochs == AUTO or params.model.calendar == AUTO:
        samples = read_parquet(folder, SAMPLES_FILE, spec.name)
        d = params.data
        split, _ = assign_split(samples, spec, d.val_fraction, d.test_fraction, params.seed)
        n_train = int((split == "train").sum())
        if "timestamp" in samples.columns:
            timestamps = samples["timestamp"].to_numpy()[split == "train"]
    return resolve(params, spec.task, n_train, timestamps)


def train_budget(tp: TrainParams, n_train: int) -> TrainParams:
    """`tp` with the training budget resolved for `n_train` samples, where it is still `auto` (a
    caller that trains without `for_dataset`, e.g. an ablation, gets the same rule)."""
    updates = {key.split(".")[1]: value for key, value, reason in _budget(tp, n_train) if reason is not None}
    return tp.model_copy(update=updates) if updates else tp


def as_tags(choices: list[Choice]) -> dict[str, str]:
    """The choices as MLflow tags: `stfn.auto.data.series_norm` -> `global (auto: ...)`."""
    return {TAG_PREFIX + c.key: c.line().split("=", 1)[1] for c in choices}
