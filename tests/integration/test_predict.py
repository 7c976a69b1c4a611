"""Batches against the champion, trained and registered by the real pipeline (a real SQLite MLflow
store): batch prediction reproduces the evaluation metric on the test split and refuses input that
does not match the model's contract; `stfn monitor` exits 0 on a batch from the training
distribution, 3 on a shifted one naming the channel, the threshold and by how much, 2 on bad input
with nothing written, reads `stfn serve`'s inference log like a batch and scores a labelled batch
against the recorded test metric (its detection power on the default champion:
benchmarks/monitor_power.py); promote / rollback from the CLI. The monitor's tests come first: the
later ones move @champion."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

STFN = str(Path(sys.executable).with_name("stfn"))
PREDICTED = "predict-digits"


def stfn(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    return subprocess.run([STFN, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_tiny_params):
    from flows.training_pipeline import training_pipeline

    root = tmp_path_factory.mktemp("predict")
    write_tiny_params(root / "params.yaml", **{"data.dataset": "predict-digits"})
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    write_dataset(
        root / "data" / "raw" / "predict-digits",
        *make_moving_digits(MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=5), name="predict-digits"),
    )
    first = training_pipeline(root=str(root))
    return root, first


def batch(folder: Path, seed: int, n: int = 300) -> Path:
    """A new draw from the generator: `n` videos of the same distribution (other digits, other seed)."""
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    write_dataset(
        folder, *make_moving_digits(MovingDigitsParams(n_train=n, n_val=8, n_test=8, seed=seed), name=PREDICTED)
    )
    return folder


def reports(root: Path) -> list[Path]:
    return sorted((root / "reports" / "monitoring").glob("*")) if (root / "reports" / "monitoring").is_dir() else []


@pytest.mark.slow
def test_monitor_exit_codes_clean_shifted_and_bad_input(trained, tmp_path):
    import mlflow

    root, result = trained
    reference = json.loads((root / "reports" / "reference" / f"{PREDICTED}.json").read_text())
    assert reference["n_train"] == 160 and len(reference["summaries"]["series.zone-0.std"]) == 160

    clean = batch(tmp_path / "clean", seed=11)
    proc = stfn(root, "monitor", str(clean), "--model", PREDICTED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no threshold crossed" in proc.stdout
    first = json.loads(next(p for p in reports(root) if p.suffix == ".json").read_text())
    assert not first["alarm"] and first["version"] == str(result["version"]) and first["n"] == 316
    assert Path(first["html"]).read_text().count("<tr") == len(first["checks"]) + 1

    gain = batch(tmp_path / "gain", seed=12)
    series = pd.read_parquet(gain / "series.parquet")
    series["zone-0"] *= 3.0  # a sensor recalibrated to a new gain
    series.to_parquet(gain / "series.parquet", index=False)
    proc = stfn(root, "monitor", str(gain), "--model", PREDICTED)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ALARM" in proc.stdout and "series.zone-0.std: KS statistic" in proc.stdout
    # the threshold: min_ks, or higher by how far the validation split lies from training (calibration)
    threshold = float(re.search(r"series\.zone-0\.std: KS statistic [\d.]+ \(threshold ([\d.]+)\)", proc.stdout)[1])
    assert threshold >= 0.1 and "p = " in proc.stdout
    assert "zone-1" not in proc.stdout and "zone-2" not in proc.stdout  # only the channel that moved

    # MLflow: one run per report in <dataset>-monitoring, the verdict as a tag
    from stfn import tracking

    tracking.configure(root / "mlflow")
    runs = mlflow.search_runs(experiment_names=[f"{PREDICTED}-monitoring"], order_by=["start_time"])
    assert list(runs["tags.alarm"]) == ["false", "true"]
    assert runs["metrics.series.zone-0.std.statistic"].iloc[1] > 0.5

    before = reports(root)
    broken = shutil.copytree(clean, tmp_path / "broken")
    (broken / "frames.npy").write_bytes((broken / "frames.npy").read_bytes()[:5000])  # truncated
    proc = stfn(root, "monitor", str(broken), "--model", PREDICTED)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "frames.npy" in proc.stderr and "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert reports(root) == before  # nothing written
    assert len(mlflow.search_runs(experiment_names=[f"{PREDICTED}-monitoring"])) == 2  # nor logged


@pytest.mark.slow
def test_crafted_batches_are_refused_before_any_statistic_and_a_tiny_one_is_not_judged(trained, tmp_path):
    """Each batch below used to end in a traceback (or an alarm on nothing): now the dataset's own
    validation runs first, exit 2 naming the file and the field; nothing written."""
    root, _ = trained
    clean = batch(tmp_path / "clean", seed=14, n=60)

    def crafted(name: str, change) -> Path:
        folder = shutil.copytree(clean, tmp_path / name)
        change(folder)
        return folder

    def series_edit(fn):
        def change(folder):
            table = pd.read_parquet(folder / "series.parquet")
            fn(table).to_parquet(folder / "series.parquet", index=False)

        return change

    def samples_edit(fn):
        def change(folder):
            table = pd.read_parquet(folder / "samples.parquet")
            fn(table).to_parquet(folder / "samples.parquet", index=False)

        return change

    def infinite(t):
        t.loc[3, "zone-0"] = np.inf
        return t

    def duplicate(t):
        t.loc[1, "sample_id"] = t.loc[0, "sample_id"]
        return t

    cases = {
        "infinite": (series_edit(infinite), ("series.parquet", "zone-0")),
        "string-step": (series_edit(lambda t: t.assign(step=t["step"].astype(str))), ("series.parquet", "step")),
        "duplicate-id": (samples_edit(duplicate), ("samples.parquet", "sample_id")),
        "empty": (samples_edit(lambda t: t.iloc[:0]), ("samples.parquet", "empty")),
    }
    from stfn.config import Paths, load_params
    from stfn.errors import DataValidationError
    from stfn.stages.monitor import monitor

    before = reports(root)
    params, paths = load_params(root / "params.yaml"), Paths(root)
    for name, (change, (file, field)) in cases.items():
        folder = crafted(name, change)
        if name == "infinite":  # the command: exit 2, one message, no traceback
            proc = stfn(root, "monitor", str(folder), "--model", PREDICTED)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 2 and "Traceback" not in out, (name, out)
        else:  # the others through the stage the command calls (what exit 2 is made of: DataValidationError)
            with pytest.raises(DataValidationError) as err:
                monitor(params, paths, folder, PREDICTED)
            out = str(err.value)
        assert file in out and field in out, (name, out)
    assert reports(root) == before  # nothing written for refused input

    tiny = batch(tmp_path / "tiny", seed=15, n=10)  # 10 + 8 + 8 samples: under monitor.min_batch (50)
    proc = stfn(root, "monitor", str(tiny), "--model", PREDICTED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "too small to judge: 26 samples, fewer than monitor.min_batch = 50" in proc.stdout


@pytest.mark.slow
def test_the_monitor_flow_only_alerts_on_an_unlabelled_batch(trained, tmp_path):
    """The Prefect flow (in process, Prefect's ephemeral API): an unlabelled batch that alarms is
    reported and appended nowhere, and no retrain is asked for (retraining on unchanged data would
    reproduce the champion); its verdict is published as a Prefect artifact."""
    from prefect.client.orchestration import get_client

    from flows.monitor import monitor

    root, _ = trained
    shifted = batch(tmp_path / "unlabelled", seed=13)
    samples = pd.read_parquet(shifted / "samples.parquet").drop(columns="label")
    samples.to_parquet(shifted / "samples.parquet", index=False)
    series = pd.read_parquet(shifted / "series.parquet")
    series["zone-1"] *= 3.0
    series.to_parquet(shifted / "series.parquet", index=False)
    before = pd.read_parquet(root / "data" / "raw" / PREDICTED / "samples.parquet")
    out = monitor(path=str(shifted), dataset=PREDICTED, root=str(root))
    assert out["report"]["alarm"] and not out["report"]["labelled"], out["report"]["summary"]
    assert "series.zone-1.std" in out["report"]["crossed"]
    assert out["appended"] is None and out["retrain_flow_run"] is None and "only alerts" in out["why"]
    assert len(pd.read_parquet(root / "data" / "raw" / PREDICTED / "samples.parquet")) == len(before)
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    assert any(a.key == f"{PREDICTED}-monitoring" and "ALARM" in (a.data or "") for a in artifact)


@pytest.mark.slow
def test_monitor_reads_the_inference_log_and_scores_a_labelled_batch(trained, tmp_path):
    from stfn.config import Paths, load_params
    from stfn.data import contract
    from stfn.endpoint import InferenceLog, Summary
    from stfn.errors import DataValidationError
    from stfn.stages.monitor import champion_model, monitor

    root, result = trained
    params, paths = load_params(root / "params.yaml"), Paths(root)
    clean = batch(tmp_path / "clean", seed=21)

    # the log `stfn serve` writes, from the same champion answering the clean batch in requests of 50
    _, model = champion_model(PREDICTED)
    predictor = model.unwrap_python_model().predictor
    spec = contract.load_spec(clean)
    samples = pd.read_parquet(clean / "samples.parquet")
    series = contract.series_array(pd.read_parquet(clean / "series.parquet"), samples["sample_id"], spec)
    frames = np.load(clean / "frames.npy")
    log, version = InferenceLog(tmp_path / "inference"), int(result["version"])
    for i in range(0, len(samples), 50):
        s, f = series[i : i + 50], frames[i : i + 50]
        out = predictor.predict({"series": s, "frames": f})
        log.append(Summary.of(predictor, s, f, out, request_id=f"r{i}", model=f"stfn-{PREDICTED}", version=version))
    log.flush()
    report = monitor(params, paths, tmp_path / "inference", PREDICTED)
    assert report["kind"] == "inference-log" and report["n"] == len(samples) and not report["alarm"], report["summary"]
    names = {c["name"] for c in report["checks"]}
    assert {"series.zone-0.mean", "frames.0.mean", "series.all.missing", "predictions"} <= names

    # a labelled batch: the champion scored on it, against the accuracy it recorded on its test set
    labelled = batch(tmp_path / "labelled", seed=22)
    report = monitor(params, paths, labelled, PREDICTED)
    quality = next(c for c in report["checks"] if c["name"] == "quality.accuracy")
    samples = pd.read_parquet(labelled / "samples.parquet")
    series = contract.series_array(pd.read_parquet(labelled / "series.parquet"), samples["sample_id"], spec)
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
        monitor(params, paths, wrong, PREDICTED)


@pytest.mark.slow
def test_predict_on_the_test_split_reproduces_the_champions_metric(trained):
    from flows.batch_predict import batch_predict

    root, first = trained
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    folder = root / "data" / "raw" / "predict-digits"
    result = batch_predict(str(folder), split="test", root=str(root))
    assert result["version"] == str(first["version"]) and result["n"] == metrics["n_test"]
    assert result["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    table = pd.read_parquet(result["predictions"])
    assert list(table.columns[:3]) == ["sample_id", "prediction", "predicted_class"]
    assert len([c for c in table.columns if c.startswith("prob_")]) == 10
    assert (table["model_version"] == int(first["version"])).all() and table["sample_id"].str.startswith("test-").all()
    proc = stfn(root, "predict", "--dataset", str(folder), "--split", "test")  # the same from the CLI
    assert proc.returncode == 0, proc.stderr
    assert f"accuracy={metrics['test']['accuracy']:.4f}" in proc.stdout


@pytest.mark.slow
def test_predict_refuses_input_that_does_not_match_the_models_contract(trained, tmp_path):
    root, _ = trained
    bad = tmp_path / "predict-digits"
    shutil.copytree(root / "data" / "raw" / "predict-digits", bad)
    spec = yaml.safe_load((bad / "dataset.yaml").read_text())
    spec["series"]["channels"][0]["name"] = "zone-x"
    spec["sensors"]["zone-x"] = spec["sensors"].pop("zone-0")
    (bad / "dataset.yaml").write_text(yaml.safe_dump(spec))
    s = pd.read_parquet(bad / "series.parquet").rename(columns={"zone-0": "zone-x"})
    s.to_parquet(bad / "series.parquet", index=False)
    proc = stfn(root, "predict", "--dataset", str(bad), "--out", str(tmp_path / "p.parquet"))
    assert proc.returncode == 2 and "series.channels" in proc.stderr and "zone-x" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.parquet").exists()


@pytest.mark.slow
def test_promote_and_rollback_from_the_cli(trained, write_tiny_params):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient

    root, first = trained
    write_tiny_params(root / "params.yaml", **{"data.dataset": "predict-digits", "registry.min_improvement": 1.0})
    second = training_pipeline(root=str(root))  # cannot beat by 1.0: registered, not promoted
    assert second["promoted"] is False
    proc = stfn(root, "promote", str(second["version"]), "--reason", "reviewed")
    assert proc.returncode == 0, proc.stderr
    champion = lambda: str(MlflowClient().get_model_version_by_alias("stfn-predict-digits", "champion").version)  # noqa: E731
    assert champion() == str(second["version"])
    proc = stfn(root, "rollback")
    assert proc.returncode == 0 and champion() == str(first["version"]), proc.stderr
    models = stfn(root, "models", "--dataset", "predict-digits")
    assert "rollback v" in models.stdout and "rolled" not in models.stderr
    again = stfn(root, "rollback")
    assert again.returncode == 1 and "no earlier champion" in again.stderr


@pytest.mark.slow
def test_new_data_the_champion_is_re_evaluated_on_the_current_test_split(trained, write_tiny_params):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    root, _ = trained
    name = "stfn-predict-digits"
    client = MlflowClient()
    before = client.get_model_version_by_alias(name, "champion")
    write_dataset(  # a new data version: other videos, other test samples
        root / "data" / "raw" / "predict-digits",
        *make_moving_digits(MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=9), name="predict-digits"),
    )
    write_tiny_params(root / "params.yaml", **{"data.dataset": "predict-digits"})
    result = training_pipeline(root=str(root))
    mv = client.get_model_version(name, str(result["version"]))
    assert mv.tags["test_set_md5"] != before.tags["test_set_md5"]
    assert "(both on the current 48 test rows)" in mv.tags["decision_reason"]  # the champion scored on them anew
    rescored = float(mv.tags[f"champion_v{before.version}_current_test_accuracy"])
    assert f"{rescored:.4f}" in mv.tags["decision_reason"]  # the gate compared against the re-evaluated value
    # and that value is what the old champion scores on the new test split
    from flows.batch_predict import batch_predict

    client.set_registered_model_alias(name, "rescored-champion", before.version)
    try:
        scored = batch_predict(str(root / "data" / "raw" / "predict-digits"), alias="rescored-champion",
                               split="test", root=str(root))  # fmt: skip
    finally:
        client.delete_registered_model_alias(name, "rescored-champion")
    assert scored["n"] == 48 and rescored == pytest.approx(scored["metrics"]["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_with_append_always_the_monitor_flow_keeps_a_clean_labelled_batch_and_asks_no_retrain(trained, tmp_path):
    """`monitor.append: always`: a labelled batch that crosses nothing is appended all the same (a
    team that labels its traffic keeps it), and no retrain is asked for: the scheduled one trains
    on it."""
    from flows.monitor import monitor

    root, _ = trained
    dataset = root / "data" / "raw" / PREDICTED
    clean = batch(tmp_path / "kept", seed=23, n=120)
    for file in ("samples.parquet", "series.parquet"):  # ids of its own: a batch never reuses the dataset's
        table = pd.read_parquet(clean / file)
        table["sample_id"] = "kept-" + table["sample_id"]
        table.drop(columns=[c for c in ("split",) if c in table]).to_parquet(clean / file, index=False)
    before = pd.read_parquet(dataset / "samples.parquet")
    out = monitor(path=str(clean), dataset=PREDICTED, root=str(root), overrides=["monitor.append=always"])
    assert not out["report"]["alarm"], out["report"]["crossed"]
    assert out["appended"] and out["retrain_flow_run"] is None and "monitor.append: always" in out["why"]
    after = pd.read_parquet(dataset / "samples.parquet")
    assert len(after) == len(before) + 136 and after["sample_id"].str.startswith("kept-").sum() == 136


@pytest.mark.slow
def test_a_labelled_batch_the_dataset_refuses_alarms_and_is_neither_appended_nor_retrained_on(trained, tmp_path):
    """The monitor judges a batch whose sensor dropped 40 % of its readings (and alarms), but the
    dataset's contract takes at most `data.max_missing_ratio`: the flow completes, says why the
    batch was not appended, and asks for no retrain (found by `make soak`: the flow used to fail)."""
    from flows.monitor import monitor

    root, _ = trained
    dataset = root / "data" / "raw" / PREDICTED
    dropping = batch(tmp_path / "dropping", seed=29, n=120)
    for file in ("samples.parquet", "series.parquet"):
        table = pd.read_parquet(dropping / file)
        table["sample_id"] = "drop-" + table["sample_id"]
        if file == "series.parquet":
            table.loc[np.random.default_rng(0).random(len(table)) < 0.4, "zone-0"] = np.nan
        table.drop(columns=[c for c in ("split",) if c in table]).to_parquet(dropping / file, index=False)
    before = len(pd.read_parquet(dataset / "samples.parquet"))
    out = monitor(path=str(dropping), dataset=PREDICTED, root=str(root))
    assert out["report"]["alarm"] and out["report"]["labelled"], out["report"]["summary"]
    assert out["appended"] is None and out["retrain_flow_run"] is None
    assert "not appended" in out["why"] and "max_missing_ratio" in out["why"] and out["why"].endswith("no retrain")
    assert len(pd.read_parquet(dataset / "samples.parquet")) == before
