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
- `model.linear_skip`: on for regression, off for classification. The skip starts the model from
  the ridge forecast on the whole window (the ridge baseline's own fit, frozen) and training keeps
  an epoch only when it beats that start on validation, so by default the fusion can add to the
  linear forecast but never fall below it on validation. A classifier has no linear forecast to
  start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stfn.config import Params, Paths
from stfn.data.contract import load_spec

AUTO = "auto"
TAG_PREFIX = "stfn.auto."

_RULES: dict[str, dict[str, tuple[Any, str]]] = {
    "data.series_norm": {
        "regression": ("global", "regression: the target is a level, so the series keep theirs"),
        "classification": ("median", "classification: each sample's offset is removed, the pattern kept"),
    },
    "model.linear_skip": {
        "regression": (True, "regression: starts from the ridge forecast; training must beat it on val"),
        "classification": (False, "classification: no linear forecast to start from"),
    },
}
KEYS = tuple(_RULES)


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


def resolve(params: Params, task: str) -> tuple[Params, list[Choice]]:
    """`params` with every `auto` setting replaced by its value for `task`, and the choices."""
    choices, updates = [], {}
    for key, rules in _RULES.items():
        value = _get(params, key)
        if value == AUTO:
            value, reason = rules[task]
            updates[key] = value
            choices.append(Choice(key, value, False, reason))
        else:
            choices.append(Choice(key, value, True, "set in params.yaml, a datasets section or --set"))
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
    """`resolve` for the task of the run's dataset (its dataset.yaml). Nothing to resolve, nothing
    read: a call on resolved params is free."""
    if all(_get(params, key) != AUTO for key in KEYS):
        return resolve(params, "regression")  # every value given: the task is not consulted
    return resolve(params, load_spec(paths.dataset_dir(params.data.dataset)).task)


def as_tags(choices: list[Choice]) -> dict[str, str]:
    """The choices as MLflow tags: `stfn.auto.data.series_norm` -> `global (auto: ...)`."""
    return {TAG_PREFIX + c.key: c.line().split("=", 1)[1] for c in choices}
