"""`stfn ablate` machinery on a tiny dataset: same split, every model, nested MLflow runs."""

import json
import statistics
from datetime import UTC, datetime

import pytest
import yaml


@pytest.mark.slow
def test_ablation_trains_every_model_over_seeds_and_logs_nested_runs(tmp_path, write_tiny_params):
    from mlflow import MlflowClient
    from stfn.config import Paths, load_params
    from stfn.stages.ablate import ablate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.validate import validate

    write_tiny_params(tmp_path / "params.yaml", **{"train.epochs": 1})
    params = load_params(tmp_path / "params.yaml")
    paths = Paths(tmp_path)
    prepare(params, paths)
    validate(params, paths)
    featurize(params, paths)
    seen = []
    report = ablate(params, paths, seeds=[0, 1], on_result=seen.append)
    saved = json.loads((tmp_path / "reports" / "ablation.json").read_text())
    assert saved["metric"] == "accuracy" and saved["dataset"] == "moving-digits"
    # where and when it was measured, for the docs' table: this machine's CPU and cores, today
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["cpu"]["model"]
    assert saved["date"][:10] == datetime.now(UTC).date().isoformat()
    cnn = saved["encoders"]["cnn"]
    assert set(saved["encoders"]) == {"cnn"} and cnn["model"]["spatial_encoder"] == "cnn"
    assert set(cnn["models"]) == {"stfn", "time_only", "space_only", "late_concat"} == set(report["models"])
    accuracies: dict[str, list[float]] = {}
    for r in seen:
        accuracies.setdefault(r["variant"], []).append(r["accuracy"])
    for variant, m in cnn["models"].items():
        assert m["seeds"] == accuracies[variant]  # each seed's test accuracy, in seed order
        assert all(a * 48 == pytest.approx(round(a * 48), abs=1e-9) for a in m["seeds"])  # k of 48 test samples
        assert m["mean"] == pytest.approx(statistics.mean(m["seeds"]), abs=1e-12)
        assert m["std"] == pytest.approx(statistics.stdev(m["seeds"]), abs=1e-12)  # sample std (ddof 1)
    assert (tmp_path / "reports" / "plots" / "ablation.png").stat().st_size > 1000
    assert len(seen) == 8 and all("pointing" in r for r in seen if r["variant"] != "time_only")
    client = MlflowClient()
    parent = client.get_run(report["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 8 and all("test_accuracy" in c.data.metrics for c in children)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["variant"] == "stfn"

    # the patches' ablation stands beside the CNN's: the CNN's entry is kept as it was
    patches = params.model_copy(update={"model": params.model.model_copy(update={"spatial_encoder": "patches"})})
    ablate(patches, paths, seeds=[0, 1], variants=("stfn", "space_only"), track=False)
    both = json.loads((tmp_path / "reports" / "ablation.json").read_text())
    assert set(both["encoders"]) == {"cnn", "patches"} and both["encoders"]["cnn"] == cnn
    assert set(both["encoders"]["patches"]["models"]) == {"stfn", "space_only"}
    assert both["encoders"]["patches"]["model"]["spatial_encoder"] == "patches"
