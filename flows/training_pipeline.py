"""The training pipeline as a Prefect 3 flow: prepare -> validate -> featurize -> train ->
evaluate -> register. Thin orchestration only: every task wraps one function of `stfn.stages`.
The Python names of the tasks end in `_task` (the stage functions keep theirs); Prefect shows
them by their `name=`.

Runs on Prefect's local ephemeral API when `PREFECT_API_URL` is unset, and reports to the server
at `PREFECT_API_URL` when it is set.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from stfn import defaults, reports, tracking
from stfn.config import Params, Paths, load_params
from stfn.ops.servers import ui_of_api
from stfn.stages.evaluate import evaluate
from stfn.stages.featurize import featurize
from stfn.stages.prepare import pinned, prepare_versioned
from stfn.stages.record import record_versions
from stfn.stages.register import register
from stfn.stages.track import end_orphan, log_evaluation, open_run
from stfn.stages.train import train
from stfn.stages.validate import validate


@task(name="prepare", cache_policy=NONE)
def prepare_task(params: Params, paths: Paths) -> dict[str, Any]:
    """Make sure the dataset exists (a built-in one through `dvc repro prepare` in a DVC repo)."""
    return prepare_versioned(params, paths)


@task(name="validate", cache_policy=NONE)
def validate_task(params: Params, paths: Paths) -> dict[str, Any]:
    """Great Expectations suites from dataset.yaml; raises DataValidationError on failure."""
    return validate(params, paths)


@task(name="featurize", cache_policy=NONE)
def featurize_task(params: Params, paths: Paths, data_md5: str) -> str:
    return str(featurize(params, paths, data_md5=data_md5))


@task(name="open-mlflow-run", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def open_run_task(
    params: Params, paths: Paths, data_md5: str, dvc_md5: str | None, choices: list[defaults.Choice]
) -> dict[str, Any]:
    return open_run(params, paths, str(flow_run.get_id() or ""), data_md5, dvc_md5, choices)


@task(name="train", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def train_task(params: Params, paths: Paths, run_id: str) -> dict[str, Any]:
    """A retry (or a rerun after a crash) resumes from the last epoch's checkpoint; a rerun after
    a killed attempt ends that attempt's MLflow run (KILLED) and links the two."""

    def on_epoch(row: dict[str, float]) -> None:
        tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    summary = train(params, paths, on_epoch=on_epoch, meta={"mlflow_run_id": run_id})
    if summary.get("base"):  # the simple forecast the model starts from, and every candidate's val MAE
        tracking.set_tags(run_id, {"stfn.base_forecast": summary["base"]["choice"]})
        tracking.log_metrics(run_id, {f"base_val_mae_{k}": v for k, v in summary["base"]["val_mae"].items()})
    if summary["resumed_from_epoch"]:
        tracking.set_tags(run_id, {"resumed_from_epoch": summary["resumed_from_epoch"]})
        end_orphan(run_id, summary)
    return summary


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(
    params: Params, paths: Paths, run_id: str, trained: dict[str, Any], validation: dict[str, Any]
) -> dict[str, Any]:
    result = evaluate(params, paths)
    log_evaluation(run_id, paths, paths.dataset_name(params.data.dataset), result, trained, validation)
    return result


@task(name="register", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def register_task(
    params: Params, paths: Paths, run_id: str, evaluation: dict[str, Any], lineage: dict[str, str]
) -> dict[str, Any]:
    return register(params, paths, run_id, evaluation, lineage)


@task(name="dvc-commit", cache_policy=NONE)
def record_task(params: Params, paths: Paths) -> str:
    """Record the outputs in dvc.lock and push them (when the run used params.yaml as is)."""
    return record_versions(params, paths)


class Split(dict):
    """Seconds per stage of this run, in the order they ran (the run summary prints them)."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


@flow(name="training-pipeline")
def training_pipeline(overrides: list[str] | None = None, root: str | None = None) -> dict[str, Any]:
    """validate -> featurize -> train -> evaluate -> register, for `params.yaml` + overrides."""
    paths = Paths(Path(root) if root else Path.cwd())
    if os.environ.get("STFN_TRAIN_DEVICE"):  # set by a (GPU) work pool's job variables
        overrides = [*(overrides or []), f"train.device={os.environ['STFN_TRAIN_DEVICE']}"]
    params = requested = load_params(paths.params_file, overrides)
    split = Split()
    with pinned(params, paths):  # one version of the dataset read, never half an append; training runs without
        with split("prepare"):
            prepared = prepare_task(params, paths)
        with split("validate"):
            validation = validate_task(params, paths)
        name = paths.dataset_name(params.data.dataset)
        create_markdown_artifact(
            reports.validation_markdown(validation), key=f"{name}-validation", description=f"Validation of {name}"
        )
        params, choices = defaults.for_dataset(params, paths)  # `auto` settings, for this dataset's task
        with split("featurize"):
            featurize_task(params, paths, validation["data_md5"])
    with split("track"):
        run = open_run_task(params, paths, validation["data_md5"], prepared.get("dvc_md5"), choices)
    try:
        with split("train"):
            trained = train_task(params, paths, run["run_id"])
        with split("evaluate"):
            evaluation = evaluate_task(params, paths, run["run_id"], trained, validation)
        with split("register"):
            registered = register_task(params, paths, run["run_id"], evaluation, run["lineage"])
    except BaseException:
        tracking.end_run(run["run_id"], "FAILED")
        raise
    with split("track"):
        tracking.end_run(run["run_id"])
    # as requested, `auto` unresolved: what dvc.yaml's stages read from params.yaml (and resolve alike)
    with split("dvc"):
        dvc_outputs = record_task(requested, paths)
    result = {
        "dataset": name,
        "dataset_folder": prepared["folder"],
        "data_md5": validation["data_md5"],
        "flow_run_id": str(flow_run.get_id() or ""),
        "mlflow_run_id": run["run_id"],
        "tracking_uri": run["tracking_uri"],
        "experiment": name,
        "experiment_id": run.get("experiment_id"),
        # the server this run reported to; none on the ephemeral API, which keeps nothing to look at
        "prefect_ui": ui_of_api(os.environ["PREFECT_API_URL"]) if os.environ.get("PREFECT_API_URL") else None,
        "metrics": evaluation["metrics"],
        "train_seconds": trained["train_seconds"],
        "epochs_run": trained["epochs_run"],
        "best_epoch": trained["best_epoch"],
        "base": trained.get("base") or {},
        "settings": [c.line() for c in choices],
        "dvc": f"{prepared['dvc']}; {dvc_outputs}",
        "split_seconds": dict(split),
        **registered,
    }
    create_markdown_artifact(
        reports.run_markdown(result),
        key=f"{name}-training-run",
        description=f"Metrics and promotion decision of {name}",
    )
    return result


if __name__ == "__main__":
    training_pipeline()
