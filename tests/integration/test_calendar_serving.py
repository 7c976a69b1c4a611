"""A timestamped regression record through the real pipeline (SQLite MLflow store, Prefect's
ephemeral API): the calendar periods and the simple forecast the model starts from are chosen,
printed and recorded; the registered model's signature takes the timestamp as ISO 8601 strings,
shown in its input example; `stfn serve` answers as `stfn predict` does, row for row, and refuses
a request without a timestamp naming it; with default settings STFN is no worse than the best
baseline on the same test rows."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import requests
from calendar_record import write_seasonal  # tests/calendar_record.py
from teamlib import serving, stfn_cmd

import mlflow
from stfn.data import contract

NAME = "seasonal"
MODEL = f"stfn-{NAME}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, write_tiny_params):
    from flows.training_pipeline import training_pipeline

    root = tmp_path_factory.mktemp("calendar")
    write_tiny_params(root / "params.yaml", **{"data.dataset": NAME, "train.epochs": 3})
    write_seasonal(root / "data" / "raw" / NAME)
    return root, training_pipeline(root=str(root))


@pytest.mark.slow
def test_the_run_chooses_the_calendar_and_the_start_and_records_them(project):
    root, r = project
    assert any(s.startswith("model.calendar=['day_of_week', 'day_of_year'] (auto: training timestamps every 1 days")
               for s in r["settings"]), r["settings"]  # fmt: skip
    base = r["base"]
    assert set(base["val_mae"]) == {"ridge", "climatology", "persistence", "combination"}
    assert base["val_mae"][base["choice"]] == min(base["val_mae"].values())
    run = mlflow.MlflowClient().get_run(r["mlflow_run_id"])
    assert run.data.tags["stfn.base_forecast"] == base["choice"]
    assert run.data.metrics[f"base_val_mae_{base['choice']}"] == pytest.approx(base["val_mae"][base["choice"]])
    assert "model.calendar" in run.data.params
    m = json.loads((root / "reports" / "metrics.json").read_text())
    best = min(b["test"]["mae"] for b in m["baselines"].values())
    assert m["test"]["mae"] <= best, (m["test"]["mae"], {k: b["test"]["mae"] for k, b in m["baselines"].items()})


@pytest.fixture(scope="module")
def server(project):
    root = project[0]
    with serving(root) as (url, _):
        yield url, root


def post(url: str, inputs: dict) -> requests.Response:
    body = {k: np.where(np.isnan(v), None, v.astype(object)).tolist() if k == "series" else v.tolist()
            for k, v in inputs.items()}  # fmt: skip
    return requests.post(
        f"{url}/invocations", json={"inputs": body}, headers={"Content-Type": "application/json"}, timeout=60
    )


@pytest.mark.slow
def test_the_endpoint_takes_iso_timestamps_and_answers_like_batch_predict(server):
    url, root = server
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.metadata.get_input_schema().input_names() == ["series", "frames", "timestamp"]
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion"))
    example = json.loads((folder / "serving_input_example.json").read_text())["inputs"]
    assert pd.Timestamp(example["timestamp"][0]).isoformat() == example["timestamp"][0]  # ISO 8601 strings
    proc = stfn_cmd(root, {}, "predict", "--dataset", str(root / "data" / "raw" / NAME), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    batch = pd.read_parquet(root / "reports" / "predictions" / f"{NAME}-test.parquet")
    raw = root / "data" / "raw" / NAME
    samples = contract.read_parquet(raw, contract.SAMPLES_FILE, NAME)
    rows = np.flatnonzero(samples["split"].to_numpy() == "test")[:40]
    spec = contract.load_spec(raw)
    series = contract.series_array(contract.read_parquet(raw, contract.SERIES_FILE, NAME), samples["sample_id"], spec)
    inputs = {
        "series": series[rows],
        "frames": np.asarray(contract.open_frames(raw, spec)[rows]),
        "timestamp": np.asarray([t.isoformat() for t in samples["timestamp"].iloc[rows]]),
    }
    r = post(url, inputs)
    assert r.status_code == 200, r.text
    expected = batch.set_index("sample_id").loc[samples["sample_id"].iloc[rows], "prediction"].to_numpy()
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), expected, rtol=1e-5, atol=1e-4)

    # the calendar is used: the same readings half a year later get another answer
    later = dict(
        inputs,
        timestamp=np.asarray([(t + pd.Timedelta(days=182)).isoformat() for t in samples["timestamp"].iloc[rows]]),
    )
    moved = post(url, later)
    assert moved.status_code == 200 and not np.allclose(moved.json()["predictions"], expected, atol=1e-3)

    no_time = post(url, {k: v for k, v in inputs.items() if k != "timestamp"})
    assert no_time.status_code == 400 and "'timestamp' is missing" in no_time.text, no_time.text
    bad = post(url, dict(inputs, timestamp=np.asarray(["yesterday"] * len(rows))))
    assert bad.status_code == 400 and "'timestamp' is not a date-time" in bad.text, bad.text
