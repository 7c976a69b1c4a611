"""Stage `validate`: Great Expectations suites built from the dataset's own `dataset.yaml`.
The report goes to reports/validation/<name>.json (+ .html), or, for refused data, to the local
state folder (.stfn/refused/), never among the outputs. DVC: `python -m stfn.stages.validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stfn import progress
from stfn.config import Params, Paths
from stfn.data import lock
from stfn.data.contract import load_spec
from stfn.fileio import dir_md5
from stfn.runtime import stage_context
from stfn.validation import STEPS, validate_dataset


def validate(params: Params, paths: Paths, folder: Path | None = None) -> dict[str, Any]:
    """Validate the run's dataset; its summary, report path and content hash (`data_md5`)."""
    folder = folder or paths.dataset_dir(params.data.dataset)
    with lock.reading(paths, folder):  # one version validated and hashed, never half an append
        summary = validate_folder(folder, folder.name, params.data.max_missing_ratio, paths)
        return {**summary, "data_md5": dir_md5(folder)}


def validate_folder(folder: Path, name: str, max_missing_ratio: float, paths: Paths) -> dict[str, Any]:
    """Validate a dataset folder with a progress bar; raises DataValidationError on failure."""
    with progress.bar("validating", STEPS) as update:
        steps = iter(range(STEPS))
        report = validate_dataset(
            folder,
            max_missing_ratio,
            paths.validation_report(name),
            lambda msg: update(next(steps, STEPS - 1), info=f"{name}: {msg}"),
            refused_report_path=paths.refused_report(name),
        )
    return {**report.summary(), "report": str(paths.validation_report(name)), "hints": hints(folder)}


def hints(folder: Path) -> list[str]:
    """What a valid dataset could declare to get more out of a run."""
    spec = load_spec(folder)
    if spec.task == "regression" and not spec.target.channel:
        return [
            "target.channel is not declared: if the target is the next value of a series channel, "
            "name that channel (dataset.yaml, target: {channel: NAME}) and runs add a persistence "
            "baseline (tomorrow = today) to the ones they compare with"
        ]
    return []


def main() -> None:
    params, paths = stage_context()
    print(json.dumps(validate(params, paths)))


if __name__ == "__main__":
    main()
