"""The pipeline run's MLflow run: opened with the lineage tags, params.yaml and the dataset before
training; fed the evaluation's numbers and files after it; linked with the run of an interrupted
attempt that this one carried on."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from stfn import defaults, registry, tracking
from stfn.config import Params, Paths
from stfn.data import contract

log = logging.getLogger(__name__)

RESUMED_FROM, CONTINUED_BY = "stfn.resumed_from_run", "stfn.continued_by_run"
AFTER_KILLED = "stfn.after_killed_runs"  # the runs of killed attempts this run found and ended
# the process that owns a run: a run left RUNNING by a process that no longer exists was killed
HOST, PID, PID_STARTED = "stfn.host", "stfn.pid", "stfn.pid_started"


def owner() -> dict[str, str]:
    """Tags naming this process: host, pid and the pid's start time (a reused pid is another process)."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), PID_STARTED: f"{psutil.Process().create_time():.3f}"}


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether the process that opened a run (its `owner` tags) is known to be gone: on this host
    only (another host's processes cannot be seen from here); runs without the tags are left alone."""
    if tags.get(HOST) != socket.gethostname() or PID not in tags:
        return False
    try:
        return f"{psutil.Process(int(tags[PID])).create_time():.3f}" != tags.get(PID_STARTED)
    except (psutil.NoSuchProcess, ValueError):
        return True


def end_killed_runs(experiment: str, paths: Paths, run_id: str) -> list[str]:
    """Runs of `experiment` left RUNNING by a process of this host that no longer exists (killed in
    any step: training, evaluation, registration): marked KILLED and linked with `run_id`, the run
    that carries on, both ways. Returns their ids."""
    ended = []
    for run in tracking.running_runs(experiment, paths.mlflow_dir):
        if run.info.run_id != run_id and owner_gone(run.data.tags or {}):
            tracking.end_run(run.info.run_id, "KILLED")
            tracking.set_tags(run.info.run_id, {CONTINUED_BY: run_id})
            ended.append(run.info.run_id)
    if ended:
        tracking.set_tags(run_id, {AFTER_KILLED: ",".join(ended)})
        log.info("run %s carries on after the killed run(s) %s, now marked KILLED", run_id, ", ".join(ended))
    return ended


def open_run(
    params: Params,
    paths: Paths,
    flow_run_id: str | None,
    data_md5: str,
    dvc_md5: str | None = None,
    choices: list[defaults.Choice] | None = None,
) -> dict[str, Any]:
    """Start the MLflow run of one pipeline run; log params (as resolved), params.yaml and the
    lineage tags, which include each `auto` setting's choice (`stfn.auto.*`, from `choices`) and
    go onto the registered version too."""
    uri = tracking.configure(paths.mlflow_dir, params.tracking.retry_seconds)
    registry.lock_kind()  # refuse now, not at the gate after training, when promotion cannot be serialised
    name = paths.dataset_name(params.data.dataset)
    lineage = {
        "git_sha": tracking.git_sha(paths.root),
        "data_md5": data_md5,
        "params_hash": params.digest(),
        "prefect_flow_run_id": flow_run_id or "none",
        "dataset": name,
    }
    if dvc_md5:
        lineage["dvc_md5"] = dvc_md5  # the data version as DVC records it (dvc.lock, or data/raw/<name>.dvc)
    lineage.update(defaults.as_tags(choices or []))
    run_id = tracking.start_run(
        name, paths.mlflow_dir, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", tags={**lineage, **owner()}
    )
    end_killed_runs(name, paths, run_id)
    tracking.log_params(run_id, params.model_dump(mode="json"))
    folder = paths.dataset_dir(params.data.dataset)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, name)
    tracking.log_dataset(run_id, name, folder, data_md5, samples)
    if paths.params_file.is_file():
        tracking.log_artifact(run_id, paths.params_file)
    return {
        "run_id": run_id,
        "tracking_uri": tracking.scrub_uri(uri),
        "experiment_id": tracking.experiment_id(name, paths.mlflow_dir),
        "lineage": lineage,
    }


def end_orphan(run_id: str, trained: dict[str, Any]) -> str | None:
    """When training resumed the checkpoint of an attempt that was killed, that attempt's MLflow
    run never ended: mark it KILLED and link the two runs both ways. Returns the orphan's id."""
    previous = (trained.get("resumed_meta") or {}).get("mlflow_run_id")
    if not previous or previous == run_id:  # a retry inside the same run continues it
        return None
    if tracking.run_status(previous) == "RUNNING":
        tracking.end_run(previous, "KILLED")
    tracking.set_tags(previous, {CONTINUED_BY: run_id})
    tracking.set_tags(run_id, {RESUMED_FROM: previous, "resumed_from_epoch": trained["resumed_from_epoch"]})
    log.info("run %s carries on the killed run %s (from epoch %d)", run_id, previous, trained["resumed_from_epoch"])
    return previous


def log_evaluation(
    run_id: str,
    paths: Paths,
    dataset: str,
    evaluation: dict[str, Any],
    trained: dict[str, Any],
    validation: dict[str, Any] | None,
) -> None:
    """The evaluation's metrics, the baselines', the training figures, the plots and reports."""
    m = evaluation["metrics"]
    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in m["test"].items()})
    tracking.log_metrics(run_id, {f"best_val_{k}": v for k, v in m["val"].items()})  # val_* are per-epoch curves
    for base, scores in m.get("baselines", {}).items():  # e.g. baseline_ridge_test_mae
        tracking.log_metrics(run_id, {f"baseline_{base}_test_{k}": v for k, v in scores["test"].items()})
    if m.get("versus_baselines"):
        vs = m["versus_baselines"]
        tracking.set_tags(run_id, {"versus_baselines": "stfn" if vs["stfn_wins"] else vs["best_baseline"]})
    tracking.log_metrics(
        run_id,
        {
            "train_seconds": trained["train_seconds"],
            "best_epoch": trained["best_epoch"],
            **trained.get("efficiency", {"n_parameters": trained["n_parameters"]}),
        },
    )
    for path in evaluation["plots"].values():
        tracking.log_artifact(run_id, Path(path), "plots")
    for extra in (paths.per_class_file, paths.history_file(dataset)):
        if extra.is_file():
            tracking.log_artifact(run_id, extra, "reports")
    if validation:
        report = Path(validation["report"])
        for f in (report, report.with_suffix(".html")):
            if f.is_file():
                tracking.log_artifact(run_id, f, "validation")
