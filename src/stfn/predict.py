"""Batch prediction with a registered model (default `models:/stfn-<dataset>@champion`).

The input is a dataset folder in the contract; it must match the model's contract (task,
channel names and order, steps, frame shape and dtype) or it is refused naming the field.
Predictions go to a parquet file (written atomically): sample_id, prediction, the class
probabilities (`prob_<class>`) or the value, and the model version; when the input carries
labels, the metrics are computed too. Each batch run is logged to MLflow.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from stfn import evaluation as ev
from stfn import progress, registry, tracking
from stfn.config import Paths
from stfn.data import contract
from stfn.errors import DataValidationError, Failure
from stfn.fileio import atomic_path

log = logging.getLogger(__name__)
CHUNK = 512


def check_contract(spec: contract.DatasetSpec, trained: dict[str, Any], like: str = "as the model was trained") -> None:
    """Refuse input whose shape differs from `trained` (a spec as `DatasetSpec.model_dump(mode="json")`
    writes it: what the model was trained on, or the dataset a batch joins), every mismatch named."""
    problems: list[Failure] = []

    def differ(field: str, expected: Any, got: Any) -> None:
        if expected != got:
            problems.append(Failure(contract.SPEC_FILE, field, f"{expected!r} ({like})", f"{got!r}"))

    tf, sf = trained["frames"], spec.frames
    differ("task", trained["task"], spec.task)
    differ("series.channels", [c["name"] for c in trained["series"]["channels"]], spec.channel_names)
    differ("series.steps", trained["series"]["steps"], spec.series.steps)
    differ("frames.shape [F, C, H, W]", [tf["count"], tf["channels"], tf["height"], tf["width"]], list(sf.shape))
    differ("frames.dtype", tf["dtype"], sf.dtype)
    differ("frames.steps", tf["steps"], sf.steps)
    if trained["task"] == "classification":
        differ("target.classes", trained["target"]["classes"], spec.target.classes)
    if problems:
        raise DataValidationError(spec.name, problems)


def select_rows(folder: Path, spec: contract.DatasetSpec, samples: pd.DataFrame, split: str | None) -> np.ndarray:
    """Row numbers to predict: all, or one split (the `split` column, else the split the
    features of a dataset of this name were made with)."""
    if split is None:
        return np.arange(len(samples))
    if "split" in samples.columns:
        return np.flatnonzero(samples["split"].astype(str).to_numpy() == split)
    # <project>/data/raw/<name>: the features of that project
    index = Paths(folder.parents[2]).features_index(spec.name) if len(folder.parents) > 2 else None
    if index is not None and index.is_file():
        idx = pd.read_parquet(index)
        return np.sort(idx.loc[idx["split"] == split, "row"].to_numpy())
    raise DataValidationError(
        spec.name,
        [Failure(contract.SAMPLES_FILE, "split", f"a split column to select '{split}'", "none, and no features")],
    )


def takes_timestamp(model: Any) -> bool:
    """Whether a loaded pyfunc's signature has a `timestamp` input (a model trained with them)."""
    schema = model.metadata.get_input_schema()
    return schema is not None and "timestamp" in (schema.input_names() or [])


def timestamps_for(model: Any, spec: contract.DatasetSpec, samples: pd.DataFrame) -> np.ndarray | None:
    """The samples' timestamps as ISO 8601 strings for a model that takes them, else None."""
    if not takes_timestamp(model):
        return None
    if "timestamp" not in samples.columns:
        raise DataValidationError(
            spec.name,
            [
                Failure(
                    contract.SAMPLES_FILE,
                    "timestamp",
                    "a date-time for every sample (the model was trained with them)",
                    "no such column",
                )
            ],
        )
    return pd.to_datetime(samples["timestamp"]).dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy().astype(str)


def predict_rows(
    model: Any,
    folder: Path,
    spec: contract.DatasetSpec,
    samples: pd.DataFrame,
    rows: np.ndarray,
    series: np.ndarray | None = None,
) -> np.ndarray:
    """A loaded pyfunc's outputs for `rows` of a dataset folder, from the raw files: the series of
    those rows read once (N x T x C floats, small beside the frames; `series`, when the caller
    has them already), the frames in chunks."""
    frames = contract.open_frames(folder, spec, len(samples))
    if series is None:
        ids = samples["sample_id"].astype(str).iloc[rows]
        wanted = [("sample_id", "in", list(ids))] if len(rows) < len(samples) else None
        series = contract.series_array(
            contract.read_parquet(folder, contract.SERIES_FILE, spec.name, filters=wanted), ids, spec
        )
    stamps = timestamps_for(model, spec, samples)
    outputs = []
    with progress.bar("predicting", len(rows)) as update:
        for i in range(0, len(rows), CHUNK):
            part = rows[i : i + CHUNK]
            inputs = {"series": series[i : i + CHUNK], "frames": np.asarray(frames[part])}
            if stamps is not None:
                inputs["timestamp"] = stamps[part]
            outputs.append(model.predict(inputs))
            update(i + len(part), info=spec.name)
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def metrics_for(spec: contract.DatasetSpec, samples: pd.DataFrame, rows: np.ndarray, out: np.ndarray) -> dict:
    """The evaluation metrics of predictions `out` for `rows`, when the samples carry labels."""
    if "label" not in samples.columns or not len(rows):
        return {}
    labels = samples["label"].to_numpy()[rows]
    if spec.task == "classification":
        return ev.classification_metrics(labels.astype(np.int64), out, spec.target.classes or [])["metrics"]
    return ev.regression_metrics(labels.astype(np.float64), out.astype(np.float64))["metrics"]


def score_model(model_uri: str, folder: Path, rows: np.ndarray) -> dict[str, float]:
    """Load `model_uri` and compute its metrics on `rows` of `folder` (raw inputs, as served)."""
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    return metrics_for(spec, samples, rows, outputs_of(model_uri, folder, rows))


def outputs_of(model_uri: str, folder: Path, rows: np.ndarray) -> np.ndarray:
    """Load `model_uri` and predict `rows` of `folder` from the raw files, as served: class
    probabilities (N, K) or values (N,), in the order of `rows`."""
    spec = contract.load_spec(folder)
    model = mlflow.pyfunc.load_model(model_uri)
    check_contract(spec, model.unwrap_python_model().meta["spec"])
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    return predict_rows(model, folder, spec, samples, rows)


def batch_predict(
    folder: Path,
    out_path: Path,
    model_name: str,
    alias: str = "champion",
    split: str | None = None,
    experiment: str | None = None,
    mlflow_dir: Path | None = None,
) -> dict[str, Any]:
    """Predict every (or one split's) sample of `folder` with `models:/<model_name>@<alias>`."""
    t0 = time.perf_counter()
    folder = Path(folder)
    spec = contract.load_spec(folder)
    mv = registry.version_by_alias(model_name, alias)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{mv.version}")  # the version resolved above
    meta = model.unwrap_python_model().meta
    check_contract(spec, meta["spec"])
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    rows = select_rows(folder, spec, samples, split)
    out = predict_rows(model, folder, spec, samples, rows)
    table = pd.DataFrame({"sample_id": samples["sample_id"].astype(str).iloc[rows].reset_index(drop=True)})
    if spec.task == "classification":
        classes = spec.target.classes or []
        table["prediction"] = out.argmax(axis=1)
        table["predicted_class"] = [classes[k] for k in table["prediction"]]
        for k, name in enumerate(classes):
            table[f"prob_{name}"] = out[:, k]
    else:
        table["prediction"] = out
    metrics = metrics_for(spec, samples, rows, out)
    table["model_version"] = int(mv.version)
    table["model"] = f"{model_name}@{alias}"
    with atomic_path(Path(out_path)) as tmp:
        table.to_parquet(tmp, index=False)
    result = {
        "predictions": str(out_path),
        "n": len(table),
        "model": f"{model_name}@{alias}",
        "version": str(mv.version),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if experiment and mlflow_dir is not None:
        run_id = tracking.start_run(
            experiment,
            mlflow_dir,
            run_name=f"predict-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"kind": "batch-predict", "model": result["model"], "model_version": result["version"]},
        )
        tracking.log_params(run_id, {"input": str(folder), "split": split or "all", "n": len(table)})
        tracking.log_metrics(run_id, {f"predict_{k}": v for k, v in metrics.items()})
        tracking.log_artifact(run_id, Path(out_path), "predictions")
        tracking.end_run(run_id)
        result["mlflow_run_id"] = run_id
    return result
