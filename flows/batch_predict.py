"""Batch prediction as a Prefect 3 flow: one task around `stfn.predict.batch_predict`, so that
scheduled scoring shows up in the Prefect UI beside the training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from stfn import registry, tracking
from stfn.config import Paths
from stfn.data.contract import load_spec
from stfn.predict import batch_predict as _batch_predict


@task(name="predict", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def predict(folder: str, out: str, model: str, alias: str, split: str | None, root: str) -> dict[str, Any]:
    paths = Paths(Path(root))
    tracking.configure(paths.mlflow_dir)
    name = load_spec(Path(folder)).name
    return _batch_predict(Path(folder), Path(out), model, alias, split, f"{name}-predictions", paths.mlflow_dir)


@flow(name="batch-predict")
def batch_predict(
    dataset: str, out: str | None = None, alias: str = "champion", split: str | None = None, root: str | None = None
) -> dict[str, Any]:
    """Score a dataset folder with `stfn-<name>@<alias>`; writes a predictions parquet."""
    paths = Paths(Path(root) if root else Path.cwd())
    name = load_spec(Path(dataset)).name
    target = out or str(paths.predictions_file(name, split))
    return predict(dataset, target, registry.model_name(name), alias, split, str(paths.root))
