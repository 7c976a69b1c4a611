"""Stage `register`: log the trained model into the pipeline's MLflow run, register it as a new
version of `stfn-<dataset>` (@challenger), and let the registry judge it against @champion on the
same test set; the outcome goes into reports/metrics.json and the run's tags."""

from __future__ import annotations

from typing import Any

import numpy as np

from stfn import defaults, gate, registry, tracking
from stfn import evaluation as ev
from stfn.config import Params, Paths
from stfn.data import contract
from stfn.features import FeatureSet, load_features
from stfn.fileio import write_json
from stfn.predict import outputs_of

QUARTERS = ("Jan-Mar", "Apr-Jun", "Jul-Sep", "Oct-Dec")


def register(
    params: Params, paths: Paths, run_id: str, evaluation: dict[str, Any], lineage: dict[str, str]
) -> dict[str, Any]:
    """Log, register and judge the model of `run_id`; returns the registration and the decision."""
    name = paths.dataset_name(params.data.dataset)
    fs = load_features(paths.features_dir(name))
    folder = paths.dataset_dir(params.data.dataset)
    rows = fs.rows("test")[:2]
    ids = fs.index["sample_id"].iloc[rows]  # features keep samples.parquet's row order
    # only the example's rows of the (long) series table
    series_long = contract.read_parquet(folder, contract.SERIES_FILE, name, filters=[("sample_id", "in", list(ids))])
    example = {
        "series": contract.series_array(series_long, ids, fs.spec),
        "frames": np.asarray(contract.open_frames(folder, fs.spec)[rows]),
    }
    if fs.meta.get("timestamp"):  # ISO 8601 strings, as a request carries them
        example["timestamp"] = np.asarray([t.isoformat() for t in fs.index["timestamp"].iloc[rows]])
    reference = paths.reference_file(name)
    model_uri = tracking.log_model(
        run_id, paths.checkpoint(name), fs.meta, example, reference if reference.is_file() else None
    )
    m = evaluation["metrics"]
    metric = m["primary_metric"]
    value = m["test"][metric]
    test_ids = fs.index.loc[fs.index["split"] == "test", "sample_id"].astype(str)
    test_set = registry.test_set_md5(lineage.get("data_md5", ""), list(test_ids))
    tags = {**lineage, "test_" + metric: value, "model_uri": model_uri, "test_set_md5": test_set}
    registered = registry.model_name(name)
    description = tracking.model_description(tracking.torch_build())
    prefix = defaults.TAG_PREFIX
    chosen = [f"- {k.removeprefix(prefix)}={v}" for k, v in lineage.items() if k.startswith(prefix)]
    if chosen:  # also tags of the version (the lineage)
        description += "\n\nSettings of this dataset's run:\n" + "\n".join(chosen)
    version = registry.register(model_uri, registered, run_id, tags, description)
    decision = registry.judge(
        registered, version, metric, value, rule(params), gate_for(fs, folder, m, model_uri, registered, rule(params))
    )
    if decision.checks:
        tracking.log_dict(run_id, {"version": version, "promoted": decision.promoted, "checks": decision.checks},
                          "gate/report.json")  # fmt: skip
    tracking.set_tags(
        run_id,
        {
            "registered_model": registered,
            "registered_version": version,
            "decision": "promoted" if decision.promoted else "rejected",
            "decision_reason": decision.reason,
        },
    )
    m.update({"mlflow_run_id": run_id, "registered_version": int(version), "promoted": decision.promoted})
    write_json(paths.metrics_file, m)
    return {
        "model_uri": model_uri,
        "registered_model": registered,
        "version": version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "champion_before": decision.champion_version,
        "champion_value_before": decision.champion_value,
        "gate": decision.checks,
    }


def rule(params: Params) -> gate.Rule:
    r = params.registry
    return gate.Rule(r.alpha, r.min_improvement, r.max_ece_increase, r.max_size_ratio, r.beat_baselines)


def test_rows_in_time(fs: FeatureSet) -> np.ndarray:
    """The test rows, in time order when the samples have timestamps (the block bootstrap's order)."""
    rows = fs.rows("test")
    if "timestamp" in fs.index.columns:
        rows = rows[np.argsort(fs.index["timestamp"].to_numpy()[rows], kind="stable")]
    return rows


def groups_of(fs: FeatureSet, rows: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The guardrails' groups of the test rows: each class; for regression the quarters of the
    year when the samples have timestamps, else the target's quartiles."""
    spec = fs.spec
    if spec.task == "classification":
        return {c: labels == k for k, c in enumerate(spec.target.classes or [])}
    if "timestamp" in fs.index.columns:
        quarter = (fs.index["timestamp"].iloc[rows].dt.month.to_numpy() - 1) // 3
        return {q: quarter == i for i, q in enumerate(QUARTERS)}
    edges = np.quantile(labels, [0.25, 0.5, 0.75])
    bins = np.digitize(labels, edges)
    return {f"target quartile {i + 1}": bins == i for i in range(4)}


def evidence(task: str, labels: np.ndarray, outputs: np.ndarray, n_parameters: float | None) -> gate.Evidence:
    """A model's outputs on the test rows as the gate weighs them, with the metrics computed the
    same way for both models."""
    if task == "classification":
        metrics = {"accuracy": float((outputs.argmax(axis=1) == labels).mean())}
        metrics["ece"] = ev.calibration(labels, outputs)["ece"]
    else:
        metrics = {"mae": float(np.abs(outputs - labels).mean())}
    return gate.Evidence(outputs, metrics, int(n_parameters) if n_parameters else None)


def gate_for(fs: FeatureSet, folder: Any, m: dict[str, Any], model_uri: str, name: str, rule_: gate.Rule):
    """The paired gate for this challenger, to run under the promotion lock: both models scored
    as served, on the same current test rows (in time order)."""
    task, metric = fs.spec.task, m["primary_metric"]
    rows = test_rows_in_time(fs)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, fs.spec.name)
    labels = samples["label"].to_numpy()[rows]  # features keep samples.parquet's row order
    labels = labels.astype(np.int64) if task == "classification" else labels.astype(np.float64)
    groups = groups_of(fs, rows, labels)
    baselines = {k: b["test"][metric] for k, b in m.get("baselines", {}).items() if metric in b.get("test", {})}
    challenger = evidence(task, labels, outputs_of(model_uri, folder, rows), m["efficiency"]["n_parameters"])

    def verdict_for(current: Any) -> gate.Verdict:
        champion = None
        if current is not None:
            champion_out = outputs_of(f"models:/{name}/{current.version}", folder, rows)
            champion = evidence(task, labels, champion_out, registry.run_metric(current, "n_parameters"))
        return gate.judge(
            task, metric, labels, challenger, champion, str(current.version) if current else None,
            rule_, groups, baselines,
        )  # fmt: skip

    return verdict_for
