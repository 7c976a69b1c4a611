"""Bring your own data: the docs' pandas/numpy example (docs/your-data.md), run as written, then `stfn ingest`
(validate, copy, `dvc add`) and the real flow on it (regression end to end, baselines beside)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def docs_example() -> str:
    text = (REPO / "docs" / "your-data.md").read_text()
    start = text.index("Writing one from pandas/numpy")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def sh(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_the_docs_dataset_is_ingested_and_runs_through_the_flow(tmp_path, write_tiny_params, monkeypatch):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient

    work = tmp_path / "incoming"
    work.mkdir()
    monkeypatch.chdir(work)
    exec(compile(docs_example(), "docs/your-data.md", "exec"), {})  # noqa: S102 - our own docs' example
    monkeypatch.chdir(tmp_path)

    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml")
    assert sh(project, "git", "init", "-q").returncode == 0
    assert sh(project, str(BIN / "dvc"), "init", "-q").returncode == 0
    proc = sh(project, str(BIN / "stfn"), "ingest", str(work / "my-dataset"))
    assert proc.returncode == 0, proc.stderr
    assert (project / "data" / "raw" / "my-dataset.dvc").is_file()

    result = training_pipeline(overrides=["data.dataset=my-dataset", "train.epochs=3"], root=str(project))
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["primary_metric"] == "mae"
    assert set(metrics["test"]) == {"mae", "rmse", "r2"}
    # target.channel declared: persistence; a timestamp: climatology; always ridge
    assert set(metrics["baselines"]) == {"persistence", "climatology", "ridge"}
    assert metrics["baselines"]["ridge"]["test"]["mae"] < metrics["baselines"]["persistence"]["test"]["mae"]
    # the defaults chosen for a regression dataset, said and recorded: the run's tags, the version's
    assert result["settings"][0].startswith("data.series_norm=global (auto: regression")
    assert metrics["versus_baselines"]["best_baseline"] == "ridge"
    stats = json.loads((project / "data" / "features" / "my-dataset" / "stats.json").read_text())
    assert stats["split_method"].startswith("by time")  # a timestamp column: split by time
    assert (project / "reports" / "plots" / "predicted_vs_actual.png").is_file()
    client = MlflowClient()
    version = client.get_model_version_by_alias("stfn-my-dataset", "champion")
    assert str(version.version) == str(result["version"])
    run = client.get_run(result["mlflow_run_id"])
    # the version the run read, under the dataset's lock: DVC's record of it and the run's hash agree
    dvc_file = yaml.safe_load((project / "data" / "raw" / "my-dataset.dvc").read_text())
    assert run.data.tags["dvc_md5"] == dvc_file["outs"][0]["md5"] == run.data.tags["data_md5"] + ".dir"
    assert {"test_mae", "baseline_ridge_test_mae", "baseline_climatology_test_mae"} <= set(run.data.metrics)
    assert run.data.params["model.linear_skip"] == "True"  # logged as resolved
    assert run.data.tags["stfn.auto.model.linear_skip"].startswith("true (auto: regression")
    assert version.tags["stfn.auto.data.series_norm"].startswith("global (auto: regression")
    assert "model.linear_skip=true (auto" in version.description
