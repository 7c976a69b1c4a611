"""The search space of `stfn tune` (params.yaml's `tune.space`): checked, sampled by an Optuna
trial, applied to the parameters, and the best trial's settings written back into params.yaml as
the dataset's own section.

A key of the space is a parameter of the `model` or `train` section (`train.lr`,
`model.temporal_encoder`) or `budget`: the training budget as a multiple of what
`train.epochs: auto` gives this dataset (about 1,000 optimizer steps, stfn.defaults), so the
range means the same on 1,000 samples as on 100,000. A value is a range `{low, high, log, step}`
(both ints: an int range) or `{choices: [...]}`. The data's own settings (`data.*`) are not
searched: they change the features, and every trial of a study trains on the same features and is
judged on the same validation split.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stfn.config import ConfigError, Params, load_params
from stfn.fileio import write_text

SECTIONS = ("model", "train")
BUDGET = "budget"
# settings that are no model choice: where it runs, how, and what it is judged on
NOT_SEARCHED = {"train.device", "train.nproc", "train.num_threads", "train.work_pool", "train.work_pool_type",
                "model.variant"}  # fmt: skip


def check_space(space: dict[str, dict[str, Any]], params: Params, where: str = "tune.space") -> dict[str, dict]:
    """The space as Optuna distributions' arguments, each key and bound checked against the
    parameters' own validation; raises ConfigError naming the key and what was expected."""
    if not space:
        raise ConfigError(f"{where}: empty: expected at least one setting to search (params.yaml, tune.space)")
    out: dict[str, dict] = {}
    for key, spec in space.items():
        at = f"{where}.{key}"
        section, _, leaf = key.partition(".")
        if key != BUDGET and (section not in SECTIONS or not leaf or key in NOT_SEARCHED):
            raise ConfigError(
                f"{at}: not a setting to search: expected `budget` or a model/train parameter "
                f"(e.g. train.lr, model.dim), not {', '.join(sorted(NOT_SEARCHED))}"
            )
        if key != BUDGET and leaf not in type(getattr(params, section)).model_fields:
            raise ConfigError(f"{at}: no such parameter in the {section} section")
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected {{low, high}} or {{choices: [...]}}, got {spec!r}")
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
                raise ConfigError(f"{at}: choices: expected a non-empty list and nothing beside it, got {spec!r}")
            for c in choices:
                _valid(params, key, c, at)
            out[key] = {"kind": "categorical", "choices": list(choices)}
            continue
        extra = set(spec) - {"low", "high", "log", "step"}
        if extra or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{at}: expected low and high (log, step optional), got {spec!r}")
        low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high:
            raise ConfigError(f"{at}: expected numbers with low < high, got low={low!r}, high={high!r}")
        if log and (low <= 0 or step is not None):
            raise ConfigError(f"{at}: a log range needs low > 0 and no step, got low={low!r}, step={step!r}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        if key != BUDGET:
            _valid(params, key, low, at)
            _valid(params, key, high, at)
        elif low <= 0:
            raise ConfigError(f"{at}: the budget is a multiple of the auto epochs: expected low > 0, got {low!r}")
        out[key] = {"kind": kind, "low": low, "high": high, "log": log, **({"step": step} if step else {})}
    return out


def _valid(params: Params, key: str, value: Any, at: str) -> None:
    if key == BUDGET:
        return
    try:
        apply(params, {key: value}, auto_epochs=1)
    except ConfigError as exc:
        raise ConfigError(f"{at}: {value!r} is not a valid value: {exc}") from None


def suggest(trial: Any, space: dict[str, dict]) -> dict[str, Any]:
    """One point of the space, drawn by an Optuna trial (its sampler decides where)."""
    values: dict[str, Any] = {}
    for key, d in space.items():
        if d["kind"] == "categorical":
            values[key] = trial.suggest_categorical(key, d["choices"])
        elif d["kind"] == "int":
            values[key] = trial.suggest_int(key, d["low"], d["high"], step=d.get("step", 1), log=d["log"])
        else:
            values[key] = trial.suggest_float(key, d["low"], d["high"], step=d.get("step"), log=d["log"])
    return values


def apply(params: Params, values: dict[str, Any], auto_epochs: int) -> Params:
    """`params` with the trial's values; `budget` scales `auto_epochs` (never under 1 epoch)."""
    data = params.model_dump(mode="json")
    for key, value in values.items():
        if key == BUDGET:
            data["train"]["epochs"] = max(1, round(auto_epochs * float(value)))
            continue
        section, leaf = key.split(".", 1)
        data[section][leaf] = value
    try:
        return Params.model_validate(data)
    except Exception as exc:  # pydantic's ValidationError: the value breaks the parameter's own rule
        raise ConfigError(str(exc).splitlines()[-1].strip() if str(exc) else repr(exc)) from None


def as_section(values: dict[str, Any], auto_epochs: int) -> dict[str, dict[str, Any]]:
    """The trial's values as params.yaml sections ({"train": {"lr": ...}, "model": {...}})."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key == BUDGET:
            out.setdefault("train", {})["epochs"] = max(1, round(auto_epochs * float(value)))
            continue
        section, leaf = key.split(".", 1)
        out.setdefault(section, {})[leaf] = float(value) if isinstance(value, float) else value
    return out


def write_best(params_file: Path, dataset: str, section: dict[str, dict[str, Any]], note: str) -> None:
    """Write `section` as `datasets.<dataset>` in params.yaml, replacing that dataset's tuned
    keys and keeping every other line and comment (ruamel.yaml's round trip); the comment above it
    names the study. Checked by load_params before the file is replaced (atomically)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    doc = yaml.load(params_file.read_text())
    if doc.get("datasets") is None or not isinstance(doc["datasets"], dict) or not len(doc["datasets"]):
        doc["datasets"] = CommentedMap()
    datasets = doc["datasets"]
    entry = datasets.get(dataset)
    if not isinstance(entry, dict):
        entry = CommentedMap()
        datasets[dataset] = entry
    for name, values in section.items():
        if not isinstance(entry.get(name), dict):
            entry[name] = CommentedMap()
        for k, v in values.items():
            entry[name][k] = v
    datasets.yaml_set_comment_before_after_key(dataset, before=note, indent=2)
    import io

    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    tmp = params_file.with_name(f".{params_file.name}.tuned")
    tmp.write_text(text)
    try:
        load_params(tmp)  # the file as written must load, for every dataset
    finally:
        tmp.unlink(missing_ok=True)
    write_text(params_file, text)


def study_note(study: str, trial: int, metric: str, value: float, storage: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    return f"tuned by `stfn tune`: study '{study}' ({storage}), trial {trial}, val {metric} {value:.4g}, {stamp}"


def finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
