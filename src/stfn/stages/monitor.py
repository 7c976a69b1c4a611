"""`stfn monitor PATH --model NAME` (and the Prefect flow `monitor`): a new batch against the
champion of dataset NAME (stfn.monitoring's checks), reported in reports/monitoring/<name>-<time>
.json and .html and logged to MLflow (experiment `<name>-monitoring`).

PATH is a dataset folder in the contract (with or without labels), or the inference log `stfn
serve` writes (`.stfn/inference/<name>/`, the traffic the endpoint answered). A batch that cannot
be read, or whose schema is not the champion's, is bad input (`DataValidationError`, nothing
written); a batch that reads but whose values moved is drift, reported.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from stfn import monitoring, plots, registry, reports, tracking
from stfn.config import Params, Paths
from stfn.data import contract
from stfn.errors import DataValidationError, Failure
from stfn.fileio import atomic_path, write_json
from stfn.inference_log import InferenceLog
from stfn.predict import check_contract, metrics_for, predict_rows
from stfn.validation import validate_dataset

log = logging.getLogger(__name__)

NO_REFERENCE = (
    "version {version} of {model} (@champion) was registered before monitoring existed and carries no "
    "reference statistics: retrain it (`stfn run`, or wait for the scheduled retraining) so the new "
    "version is logged with them, or pass --reference FILE (reports/reference/{dataset}.json of the "
    "run that trained it)"
)


@dataclass
class Batch:
    """What the checks read of a batch: per-sample summaries, the champion's predictions, the
    labels when there are some, and the raw readings' aggregates (None for an inference log)."""

    kind: str  # dataset | inference-log
    n: int
    summaries: dict[str, np.ndarray]
    predictions: np.ndarray | None
    labels: np.ndarray | None
    series_stats: dict[str, dict] | None
    metric_value: float | None = None


def champion_model(name: str) -> tuple[Any, Any]:
    """(the registry's @champion version, the loaded pyfunc) of dataset `name`."""
    registered = registry.model_name(name)
    try:
        mv = registry.version_by_alias(registered, "champion")
    except Exception:  # noqa: BLE001 - MLflow's "not found" comes in several classes
        raise DataValidationError(
            name,
            [Failure("--model", None, f"a dataset whose model {registered} has a @champion", "none registered")],
        ) from None
    return mv, mlflow.pyfunc.load_model(f"models:/{registered}/{mv.version}")


def load_reference(model: Any, mv: Any, name: str, override: Path | None) -> dict[str, Any]:
    """The reference statistics logged with the champion (or `override`); a champion registered
    before monitoring existed has none: bad input, with the way out."""
    logged = getattr(model.unwrap_python_model(), "reference", None)  # older STFNModel classes lack it
    path = override or (Path(logged) if logged else None)
    if path is None:
        raise DataValidationError(
            name,
            [
                Failure(
                    "reference",
                    None,
                    "reference statistics",
                    NO_REFERENCE.format(version=mv.version, model=mv.name, dataset=name),
                )
            ],
        )
    try:
        ref = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataValidationError(name, [Failure(str(path), None, "a readable reference (JSON)", str(exc))]) from None
    if ref.get("format") != monitoring.FORMAT or ref.get("dataset") != name:
        raise DataValidationError(
            name,
            [
                Failure(
                    str(path),
                    "format/dataset",
                    f"format {monitoring.FORMAT} of dataset {name}",
                    str(ref.get("dataset")),
                )
            ],
        )
    return ref


def checked_batch(folder: Path, model: Any, params: Params) -> None:
    """A batch folder checked before any statistic: its dataset.yaml against the champion's
    contract, not empty, then the dataset's own Great Expectations suites (`stfn validate`'s:
    unique ids, integer steps, finite readings and frames, ...), so a crafted batch is refused
    naming the file and the field, never a traceback. Labels are optional, and the missing share
    and the channels' bounds are left to the monitor's own checks (more gaps, readings out of
    range: drift to report, not input to refuse)."""
    spec = contract.load_spec(folder)
    check_contract(spec, model.unwrap_python_model().meta["spec"])
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    if samples.empty:
        raise DataValidationError(
            spec.name, [Failure(contract.SAMPLES_FILE, None, "at least one sample to monitor", "the batch is empty")]
        )
    validate_dataset(folder, max_missing_ratio=1.0, batch=True)


def too_small(n: int, least: int) -> dict[str, Any]:
    """The result for a batch too small to judge: no test run, no alarm, said so."""
    return {
        "alarm": False,
        "drift": False,
        "degradation": False,
        "crossed": [],
        "n_tests": 0,
        "p_threshold": 0.0,  # no test run
        "checks": [],
        "too_small": True,
        "note": [f"too small to judge: {n} samples, fewer than monitor.min_batch = {least}; nothing tested"],
    }


def read_dataset_batch(folder: Path, model: Any, reference: dict[str, Any]) -> Batch:
    """A dataset folder in the contract, scored by the champion."""
    spec = contract.load_spec(folder)
    check_contract(spec, model.unwrap_python_model().meta["spec"])
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    if "sample_id" not in samples.columns:
        raise DataValidationError(spec.name, [Failure(contract.SAMPLES_FILE, "sample_id", "column exists", "missing")])
    series_long = contract.read_parquet(folder, contract.SERIES_FILE, spec.name)
    absent = [c for c in ["sample_id", "step", *spec.channel_names] if c not in series_long.columns]
    if absent:
        raise DataValidationError(
            spec.name,
            [Failure(contract.SERIES_FILE, c, "column exists (dataset.yaml series)", "missing") for c in absent],
        )
    series = contract.series_array(series_long, samples["sample_id"], spec)
    frames = contract.open_frames(folder, spec, len(samples))
    rows = np.arange(len(samples))
    out = predict_rows(model, folder, spec, samples, rows, series)  # the series read above, not again
    task = reference["task"]
    predictions = out.argmax(axis=1) if task == "classification" else np.asarray(out, np.float64)
    labels, metric = None, None
    if "label" in samples.columns and samples["label"].notna().all() and len(samples):
        labels = samples["label"].to_numpy(np.int64 if task == "classification" else np.float64)
        metric = float(metrics_for(spec, samples, rows, out)[reference["metric"]["name"]])
    lo_hi = {c: (reference["series"][c]["min"], reference["series"][c]["max"]) for c in spec.channel_names}
    return Batch(
        "dataset",
        len(samples),
        monitoring.sample_summaries(series, np.asarray(frames), spec.channel_names, reference["saturation"]),
        predictions,
        labels,
        monitoring.series_aggregates(series, spec.channel_names, lo_hi),
        metric,
    )


def is_inference_log(path: Path) -> bool:
    return path.is_dir() and not (path / contract.SPEC_FILE).exists() and any(path.glob("*.parquet"))


def read_inference_log(folder: Path, reference: dict[str, Any], version: str, since: datetime | None) -> Batch:
    """The rows `stfn serve` logged (after `since`): their per-sample input summaries and, of the
    rows the champion's version answered, the predictions."""
    try:
        table = InferenceLog.read(folder)
    except Exception as exc:  # noqa: BLE001 - any reader error is bad input
        raise DataValidationError(
            folder.name, [Failure(str(folder), None, "readable inference-log parquet files", f"{exc}")]
        ) from None
    channels = reference["channels"]
    needed = ["time", "version", "prediction", *(f"series_mean_{c}" for c in channels)]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise DataValidationError(
            folder.name,
            [
                Failure(str(folder), c, f"a column of the inference log of {reference['dataset']}", "missing")
                for c in absent
            ],
        )
    if since is not None:
        table = table[table["time"] >= pd.Timestamp(since)]
    if table.empty:
        raise DataValidationError(folder.name, [Failure(str(folder), "time", "logged rows to monitor", "none")])
    summaries = {f"series.{c}.mean": table[f"series_mean_{c}"].to_numpy(np.float64) for c in channels}
    for col in table.columns:
        if col.startswith("frames_mean_"):
            summaries[f"frames.{col.removeprefix('frames_mean_')}.mean"] = table[col].to_numpy(np.float64)
    # the log keeps one missing share per sample over every channel: its reference is the mean of
    # the channels' (equal window lengths)
    summaries["series.all.missing"] = table["series_missing"].to_numpy(np.float64)
    served = table[table["version"].astype(str) == str(version)]
    preds = served["prediction"].to_numpy(np.int64 if reference["task"] == "classification" else np.float64)
    return Batch("inference-log", len(table), summaries, preds if len(preds) else None, None, None)


def monitor(
    params: Params,
    paths: Paths,
    source: Path,
    dataset: str | None = None,
    reference_file: Path | None = None,
    since: datetime | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Compare the batch at `source` with the champion of `dataset`; write and log the report.
    Raises DataValidationError (nothing written) for a batch that cannot be read or is not in
    the champion's contract."""
    t0 = time.perf_counter()
    source = Path(source)
    name = paths.dataset_name(dataset or params.data.dataset)
    if not source.exists():
        raise DataValidationError(
            source.name, [Failure(str(source), None, "a dataset folder or inference log", "no such path")]
        )
    tracking.configure(paths.mlflow_dir, params.tracking.retry_seconds)
    mv, model = champion_model(name)
    reference = load_reference(model, mv, name, reference_file)
    if is_inference_log(source):
        batch = read_inference_log(source, reference, mv.version, since)
        ref = dict(reference)
        missing = [np.asarray(v) for k, v in reference["summaries"].items() if k.endswith(".missing")]
        ref["summaries"] = {**reference["summaries"], "series.all.missing": np.mean(missing, axis=0).tolist()}
        reference = ref
    else:
        checked_batch(source, model, params)
        batch = read_dataset_batch(source, model, reference)
    if batch.n < params.monitor.min_batch:
        result = too_small(batch.n, params.monitor.min_batch)
    else:
        result = monitoring.compare(
            reference,
            params.monitor,
            summaries=batch.summaries,
            series_stats=batch.series_stats,
            predictions=batch.predictions,
            labels=batch.labels,
            metric_value=batch.metric_value,
        )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = {
        "dataset": name,
        "source": str(source),
        "kind": batch.kind,
        "n": batch.n,
        "labelled": batch.labels is not None,
        "model": mv.name,
        "version": str(mv.version),
        "time": stamp,
        "thresholds": params.monitor.model_dump(),
        **result,
        "summary": result.get("note", []) + [monitoring.describe(c) for c in result["checks"] if c["crossed"]],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    base = paths.monitoring / f"{name}-{stamp}"
    for k in range(2, 1000):  # two batches in one second: each keeps its report
        if not base.with_suffix(".json").exists():
            break
        base = paths.monitoring / f"{name}-{stamp}-{k}"
    values = {**batch.summaries, "predictions": batch.predictions, "labels": batch.labels}
    png = plots.plot_monitoring(
        reference, {k: v for k, v in values.items() if v is not None}, result["checks"], base.with_suffix(".png")
    )
    html = base.with_suffix(".html")
    with atomic_path(html) as tmp:
        tmp.write_text(reports.monitoring_html(report, png))
    report["report"], report["html"] = str(base.with_suffix(".json")), str(html)
    if track:
        report["mlflow_run_id"] = log_report(paths, report, [base.with_suffix(".json"), html, png])
    write_json(base.with_suffix(".json"), report)
    if report.get("mlflow_run_id"):
        tracking.log_artifact(report["mlflow_run_id"], base.with_suffix(".json"), "monitoring")
    return report


def log_report(paths: Paths, report: dict[str, Any], files: list[Path]) -> str:
    """A run in experiment `<dataset>-monitoring`: each check's statistic as a metric, the verdict
    as tags, the HTML report and its chart as artifacts."""
    run_id = tracking.start_run(
        f"{report['dataset']}-monitoring",
        paths.mlflow_dir,
        run_name=f"monitor-{report['time']}",
        tags={
            "kind": "monitor",
            "alarm": str(report["alarm"]).lower(),
            "crossed": ", ".join(report["crossed"])[:4000] or "-",
            "model": report["model"],
            "model_version": report["version"],
            "batch_kind": report["kind"],
        },
    )
    tracking.log_params(run_id, {"source": report["source"], "n": report["n"], **report["thresholds"]})
    metrics = {"alarm": float(report["alarm"]), "n": float(report["n"])}
    for c in report["checks"]:
        metrics[f"{c['name']}.statistic"] = c["statistic"]
        if c["p_value"] is not None:
            metrics[f"{c['name']}.p_value"] = c["p_value"]
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items() if np.isfinite(v)})
    for f in files[1:]:
        tracking.log_artifact(run_id, f, "monitoring")
    tracking.end_run(run_id)
    return run_id
