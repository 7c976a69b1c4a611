"""Stage `register`: log the trained model into the pipeline's MLflow run, register it as a new
version of `stfn-<dataset>` (@challenger), and let the registry judge it against @champion on the
same test set; the outcome goes into reports/metrics.json and the run's tags."""

from __future__ import annotations

from typing import Any

import numpy as np

from stfn import defaults, registry, tracking
from stfn.config import Params, Paths
from stfn.data import contract
from stfn.features import load_features
from stfn.fileio import write_json
from stfn.predict import score_model


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
    test_rows = fs.rows("test")
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
        registered,
        version,
        metric,
        value,
        params.registry.min_improvement,
        test_set,
        lambda uri: score_model(uri, folder, test_rows),  # the champion on today's test rows
        len(test_rows),
    )
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
    }
