"""`stfn monitor` (#20) against a champion trained and registered by the real pipeline (a real
SQLite MLflow store): a batch from the training distribution exits 0, a shifted one exits 3 naming
the channel, the threshold and by how much, bad input exits 2 with nothing written; the inference
log `stfn serve` writes is read like a batch; a labelled batch is scored by the champion against
its recorded test metric (the detection power on the default champion: benchmarks/monitor_power.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

STFN = str(Path(sys.executable).with_name("stfn"))
NAME = "monitor-digits"


def stfn(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    return subprocess.run([STFN, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def batch(folder: Path, seed: int, n: int = 300) -> Path:
    """A new draw from the generator: `n` videos of the same distribution (other digits, other seed)."""
    from stfn.config import MovingDigitsParams
    from stfn.data import make_moving_digits, write_dataset

    write_dataset(folder, *make_moving_digits(MovingDigitsParams(n_train=n, n_val=8, n_test=8, seed=seed), name=NAME))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_tiny_params):
    from flows.training_pipeline import training_pipeline

    root = tmp_path_factory.mktemp("monitor")
    write_tiny_params(root / "params.yaml", **{"data.dataset": NAME})
    batch(root / "data" / "raw" / NAME, seed=5, n=160)
    result = training_pipeline(root=str(root))
    return root, result


def reports(root: Path) -> list[Path]:
    return sorted((root / "reports" / "monitoring").glob("*")) if (root / "reports" / "monitoring").is_dir() else []


@pytest.mark.slow
def test_monitor_exit_codes_clean_shifted_and_bad_input(trained, tmp_path):
    import mlflow

    root, result = trained
    reference = json.loads((root / "reports" / "reference" / f"{NAME}.json").read_text())
    assert reference["n_train"] == 160 and len(reference["summaries"]["series.zone-0.std"]) == 160

    clean = batch(tmp_path / "clean", seed=11)
    proc = stfn(root, "monitor", str(clean), "--model", NAME)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no threshold crossed" in proc.stdout
    first = json.loads(next(p for p in reports(root) if p.suffix == ".json").read_text())
    assert not first["alarm"] and first["version"] == str(result["version"]) and first["n"] == 316
    assert Path(first["html"]).read_text().count("<tr") == len(first["checks"]) + 1

    gain = batch(tmp_path / "gain", seed=12)
    series = pd.read_parquet(gain / "series.parquet")
    series["zone-0"] *= 3.0  # a sensor recalibrated to a new gain
    series.to_parquet(gain / "series.parquet", index=False)
    proc = stfn(root, "monitor", str(gain), "--model", NAME)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ALARM" in proc.stdout and "series.zone-0.std: KS statistic" in proc.stdout
    assert "(threshold 0.1)" in proc.stdout and "p = " in proc.stdout
    assert "zone-1" not in proc.stdout and "zone-2" not in proc.stdout  # only the channel that moved

    # MLflow: one run per report in <dataset>-monitoring, the verdict as a tag
    from stfn import tracking

    tracking.configure(root / "mlflow")
    runs = mlflow.search_runs(experiment_names=[f"{NAME}-monitoring"], order_by=["start_time"])
    assert list(runs["tags.alarm"]) == ["false", "true"]
    assert runs["metrics.series.zone-0.std.statistic"].iloc[1] > 0.5

    before = reports(root)
    broken = shutil.copytree(clean, tmp_path / "broken")
    (broken / "frames.npy").write_bytes((broken / "frames.npy").read_bytes()[:5000])  # truncated
    proc = stfn(root, "monitor", str(broken), "--model", NAME)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "frames.npy" in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert reports(root) == before  # nothing written
    assert len(mlflow.search_runs(experiment_names=[f"{NAME}-monitoring"])) == 2  # nor logged


@pytest.mark.slow
def test_monitor_reads_the_inference_log_and_scores_a_labelled_batch(trained, tmp_path):
    from stfn import data as data_mod
    from stfn.config import Paths, load_params
    from stfn.endpoint import InferenceLog, Summary
    from stfn.errors import DataValidationError
    from stfn.stages.monitor import champion_model, monitor

    root, result = trained
    params, paths = load_params(root / "params.yaml"), Paths(root)
    clean = batch(tmp_path / "clean", seed=21)

    # the log `stfn serve` writes, from the same champion answering the clean batch in requests of 50
    _, model = champion_model(NAME)
    predictor = model.unwrap_python_model().predictor
    spec = data_mod.load_spec(clean)
    samples = pd.read_parquet(clean / "samples.parquet")
    series = data_mod.series_array(pd.read_parquet(clean / "series.parquet"), samples["sample_id"], spec)
    frames = np.load(clean / "frames.npy")
    log = InferenceLog(tmp_path / "inference")
    for i in range(0, len(samples), 50):
        s, f = series[i : i + 50], frames[i : i + 50]
        log.append(Summary.of(predictor, s, f, predictor.predict({"series": s, "frames": f}),
                              request_id=f"r{i}", model=f"stfn-{NAME}", version=int(result["version"])))  # fmt: skip
    log.flush()
    report = monitor(params, paths, tmp_path / "inference", NAME)
    assert report["kind"] == "inference-log" and report["n"] == len(samples) and not report["alarm"], report["summary"]
    names = {c["name"] for c in report["checks"]}
    assert {"series.zone-0.mean", "frames.0.mean", "series.all.missing", "predictions"} <= names

    # a labelled batch: the champion scored on it, against the accuracy it recorded on its test set
    labelled = batch(tmp_path / "labelled", seed=22)
    report = monitor(params, paths, labelled, NAME)
    quality = next(c for c in report["checks"] if c["name"] == "quality.accuracy")
    samples = pd.read_parquet(labelled / "samples.parquet")
    series = data_mod.series_array(pd.read_parquet(labelled / "series.parquet"), samples["sample_id"], spec)
    predicted = predictor.predict({"series": series, "frames": np.load(labelled / "frames.npy")}).argmax(axis=1)
    assert quality["batch"] == pytest.approx(float((predicted == samples["label"].to_numpy()).mean()), abs=1e-12)
    assert quality["reference"] == pytest.approx(result["metrics"]["test"]["accuracy"], abs=1e-12)
    significant = quality["p_value"] < quality["p_threshold"]  # scipy's binomtest, one-sided
    assert quality["crossed"] == (quality["statistic"] > params.monitor.max_metric_drop and significant)
    assert "labels" in {c["name"] for c in report["checks"]} and "labels" not in report["crossed"]

    # the wrong schema is bad input, named
    wrong = shutil.copytree(clean, tmp_path / "wrong")
    (wrong / "dataset.yaml").write_text((wrong / "dataset.yaml").read_text().replace("zone-3", "zone-9"))
    with pytest.raises(DataValidationError, match="series.channels"):
        monitor(params, paths, wrong, NAME)
