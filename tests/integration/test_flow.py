"""The real pipeline: a Prefect flow (local ephemeral API) on a tiny dataset, MLflow on SQLite,
both in temp folders; then the same stages through `dvc repro` in a temp git repo."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_flow_end_to_end_registers_and_gates(tmp_path, write_tiny_params):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient

    write_tiny_params(tmp_path / "params.yaml")
    first = training_pipeline(root=str(tmp_path))
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {
        "dataset",
        "task",
        "model",
        "test",
        "val",
        "n_train",
        "n_test",
        "train_seconds",
        "mlflow_run_id",
        "registered_version",
        "promoted",
    }
    assert metrics["mlflow_run_id"] == first["mlflow_run_id"] and metrics["promoted"] is True
    assert metrics["n_train"] == 160 and metrics["n_test"] == 48
    # the test accuracy is the share of the 48 test samples the per-class table counts as right
    per_class = json.loads((tmp_path / "reports" / "per_class.json").read_text())
    right = sum(round(c["recall"] * c["support"]) for c in per_class)
    assert sum(c["support"] for c in per_class) == 48 and metrics["test"]["accuracy"] == right / 48
    eff = metrics["efficiency"]
    assert eff["flops_train_step_per_sample"] > eff["flops_forward_per_sample"] > 0 and eff["peak_memory_mb"] > 0
    client = MlflowClient()
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"git_sha", "data_md5", "params_hash", "prefect_flow_run_id"} <= set(run.data.tags)
    inputs = run.inputs.dataset_inputs  # linked with mlflow.log_input
    assert len(inputs) == 1 and inputs[0].dataset.name == "moving-digits"
    assert inputs[0].dataset.digest == run.data.tags["data_md5"][:36] and inputs[0].tags[0].value == "training"
    assert {
        "val_accuracy",
        "best_val_accuracy",
        "test_accuracy",
        "test_macro_f1",
        "flops_train_step_per_sample",
        "train_samples_per_s",
        "peak_memory_mb",
        "n_parameters",
    } <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {
        "plots/confusion_matrix.png",
        "plots/training_curves.png",
        "plots/attention.png",
        "plots/reliability.png",
        "plots/input_samples.png",
    } <= artifacts
    assert {"ece", "brier", "nll", "pointing"} <= set(metrics["test"])
    pointing = metrics["test"]["pointing"]
    assert pointing * 48 == pytest.approx(round(pointing * 48), abs=1e-9)  # k of the 48 test samples
    for key in ("accuracy", "macro_f1", "nll", "ece", "brier", "pointing"):  # what MLflow has, as reported
        assert run.data.metrics[f"test_{key}"] == pytest.approx(metrics["test"][key], rel=1e-9), key
    name = "stfn-moving-digits"
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == str(first["version"]) and champion.tags["decision"] == "promoted"
    assert (tmp_path / "reports" / "validation" / "moving-digits.html").is_file()

    # Prefect artifacts: the run summary and the validation summary, under lowercase-dashed keys
    from prefect.artifacts import Artifact

    summary = Artifact.get("moving-digits-training-run")
    assert summary is not None and summary.type == "markdown"
    assert first["mlflow_run_id"] in summary.data and "promoted to @champion" in summary.data
    assert "| **stfn** |" in summary.data and "accuracy" in summary.data
    checked = Artifact.get("moving-digits-validation")
    assert checked is not None and "expectations passed" in checked.data

    # the registered model predicts from raw inputs of the contract
    import mlflow.pyfunc
    import numpy as np

    from stfn.data.contract import load_spec, open_frames, read_parquet, series_array

    folder = tmp_path / "data" / "raw" / "moving-digits"
    spec = load_spec(folder)
    samples = read_parquet(folder, "samples.parquet", spec.name)
    ids = samples["sample_id"].iloc[:5]
    series = series_array(read_parquet(folder, "series.parquet", spec.name), ids, spec)
    probs = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        {"series": series, "frames": np.asarray(open_frames(folder, spec)[:5])}
    )
    assert probs.shape == (5, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    # a second run, as a user starts it (`stfn run` in a terminal), cannot beat the champion by an
    # impossible margin: registered, not promoted; the terminal showed the work and the outcome
    from teamlib import stfn_in_terminal

    write_tiny_params(tmp_path / "params.yaml", **{"registry.min_improvement": 1.0})
    code, shown = stfn_in_terminal(tmp_path, {"PREFECT_LOGGING_LEVEL": "INFO"}, "run")
    assert code == 0, shown[-3000:]
    second = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    second["version"] = second["registered_version"]
    assert int(second["version"]) == int(first["version"]) + 1 and second["promoted"] is False
    for bar in ("validating", "training", "evaluating"):  # featurize: up to date, skipped
        assert re.search(rf"✓ {bar} .*━ (\d+)/\1 ", shown), f"no finished {bar} bar in:\n{shown[-3000:]}"
    assert re.search(r"training .* epoch 2/2 train_loss=\d\.\d{4} val_accuracy=\d\.\d{4}", shown)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in shown.splitlines()
            if line.count("│") == 3 and line.split("│")[1].strip()}  # fmt: skip
    acc = second["test"]["accuracy"]
    assert rows["dataset"].startswith("moving-digits (") and rows["data version"].startswith("md5 ")
    assert (
        rows["vs champion"]
        == f"test accuracy {acc:.4f} vs {metrics['test']['accuracy']:.4f} of champion v{first['version']}"
    )
    assert rows["decision"].startswith("kept the champion: ") and rows["registered"].endswith(
        f"version {second['version']} @challenger"
    )
    assert re.fullmatch(
        rf"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{second['mlflow_run_id']}  \(after `make ui`\)",
        rows["MLflow run"],
    )
    assert re.match(r"[0-9a-f-]{36}  \(ephemeral API", rows["Prefect flow run"])
    assert "Traceback" not in shown and "UserWarning" not in shown and "CloudPickle" not in shown
    assert re.search(r"INFO prefect\.task_runs \[train-\w+\]: Finished in state Completed\(\)", shown)  # which task
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(first["version"])
    assert str(client.get_model_version_by_alias(name, "challenger").version) == str(second["version"])
    rejected = client.get_model_version(name, str(second["version"]))
    assert rejected.tags["decision"] == "rejected" and "does not beat" in rejected.tags["decision_reason"]
    # the gate report: printed in the summary, tagged on the version, shown for it by `stfn models --gate`
    assert "the gate's checks" in shown and "McNemar exact" in shown
    code, report = stfn_in_terminal(tmp_path, {}, "models", "--gate", str(second["version"]))
    assert code == 0 and "gain in accuracy, beyond noise" in report and "fail" in report, report
    assert "calibration (ECE)" in report and "no class worse beyond noise" in report and "does not beat" in report


@pytest.mark.slow
def test_flow_refuses_invalid_data_and_registers_nothing(tmp_path, tiny_dataset, write_tiny_params):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient
    from stfn.errors import DataValidationError

    bad = tmp_path / "data" / "raw" / "broken-set"
    shutil.copytree(tiny_dataset, bad)
    spec = yaml.safe_load((bad / "dataset.yaml").read_text())
    spec["name"] = "broken-set"
    (bad / "dataset.yaml").write_text(yaml.safe_dump(spec))
    import pandas as pd

    s = pd.read_parquet(bad / "samples.parquet")
    s.loc[0, "label"] = 42
    s.to_parquet(bad / "samples.parquet", index=False)
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": "broken-set"})
    with pytest.raises(DataValidationError, match="label"):
        training_pipeline(root=str(tmp_path))
    assert not (tmp_path / "data" / "features" / "broken-set").exists()
    assert MlflowClient().search_model_versions("name='stfn-broken-set'") == []


@pytest.mark.slow
def test_dvc_repro_runs_the_stages_then_does_nothing(tmp_path, write_tiny_params):
    proj = tmp_path / "proj"
    proj.mkdir()
    for item in ("dvc.yaml", "src"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, proj / item)
    write_tiny_params(proj / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dvc = str(Path(sys.executable).with_name("dvc"))

    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    sh("git", "init", "-q")
    sh(dvc, "init", "-q")
    sh(dvc, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    first = sh(dvc, "repro")
    for stage in ("prepare", "validate", "featurize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((proj / "reports" / "metrics.json").read_text())
    assert metrics["dataset"] == "moving-digits" and "accuracy" in metrics["test"]
    second = sh(dvc, "repro")
    assert "Running stage" not in second and "up to date" in second
    sh(dvc, "push")
    assert any((tmp_path / "remote").rglob("*"))
    assert "up to date" in sh(dvc, "status").lower()

    # the Prefect flow in the same repo: prepare goes through `dvc repro prepare` (unchanged, so
    # skipped) and the outputs it makes are recorded in dvc.lock, so `dvc repro` stays a no-op
    from flows.training_pipeline import training_pipeline

    result = training_pipeline(root=str(proj))
    assert "unchanged, skipped" in result["dvc"] and "; outputs recorded in dvc.lock" in result["dvc"]
    assert "Running stage" not in sh(dvc, "repro")
    assert "up to date" in sh(dvc, "status").lower()
