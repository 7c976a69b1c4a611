"""Scheduled retraining as a Prefect 3 flow: refresh the data (DVC), run the training pipeline
(in this process, or as the `training-pipeline/train` deployment on `train.work_pool`,
e.g. GPU workers), and let the gate judge the challenger against the champion on the same,
current test split (the champion is re-evaluated there when its recorded test set differs).

Deployed by `prefect.yaml` (`make deploy`) on a cron schedule from `params.yaml` (`retrain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.deployments import run_deployment

from flows.training_pipeline import training_pipeline
from stfn import registry, tracking
from stfn.config import Paths, load_params
from stfn.stages.prepare import refresh_data as refresh


@task(name="refresh-data", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def refresh_data(overrides: list[str], root: str) -> str:
    paths = Paths(Path(root))
    return refresh(load_params(paths.params_file, overrides), paths)


@task(name="outcome-of-remote-training", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def remote_outcome(flow_run_id: str, dataset: str, root: str) -> dict[str, Any]:
    """What the training deployment registered, read back from MLflow by its flow-run id (the
    worker may be another host: results travel through the registry, not the disk)."""
    tracking.configure(Paths(Path(root)).mlflow_dir)
    return registry.version_for_flow_run(registry.model_name(dataset), flow_run_id)


@flow(name="retrain")
def retrain(dataset: str | None = None, overrides: list[str] | None = None, root: str | None = None) -> dict[str, Any]:
    """Refresh data -> train (here or on `train.work_pool`) -> register -> gate on current data."""
    root = str(Path(root).resolve()) if root else str(Path.cwd())
    overrides = list(overrides or []) + ([f"data.dataset={dataset}"] if dataset else [])
    params = load_params(Paths(Path(root)).params_file, overrides)
    data = refresh_data(overrides, root)
    if not params.train.work_pool:
        return {"data": data, "where": "in-process", **training_pipeline(overrides=overrides, root=root)}
    name = "training-pipeline/train"  # prefect.yaml puts it on train.work_pool
    child = run_deployment(name=name, parameters={"overrides": overrides, "root": root}, as_subflow=True)
    if not child.state or not child.state.is_completed():
        raise RuntimeError(f"deployment {name} ended {child.state.type if child.state else 'without a state'}")
    dataset_name = Paths(Path(root)).dataset_name(params.data.dataset)
    return {"data": data, "where": name, **remote_outcome(str(child.id), dataset_name, root)}


if __name__ == "__main__":
    retrain()
