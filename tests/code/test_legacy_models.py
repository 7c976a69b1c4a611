"""Models registered by earlier releases still load, predict, serve and can be rolled back to.

Each folder under `tests/fixtures/` is an MLflow store made by an earlier commit's code (its
`origin.json` names the commit and how it was made): two versions of stfn-moving-digits, v2
@champion, and each version's expected output on its own input example.

- `legacy-registry`: the code of 1cdd486, whose logged `serving.py` imports that code's module
  paths and whose checkpoints carry that code's config keys; no code in the model's folder.
- `registry-0.1.0`: release 0.1.0 (79465ff), whose models carry their own code (`code/stfn/`)
  and reference statistics, and whose alias history is one JSON tag on the registered model."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest

import mlflow
from stfn import registry, tracking

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORES = ("legacy-registry", "registry-0.1.0")
# the columns of MLflow's store that hold the absolute paths of the folder the fixture was made in
PATH_COLUMNS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
    "datasets": ["dataset_source"],
}


def open_store(fixture: Path, tmp_path: Path, monkeypatch) -> Path:
    origin = json.loads((fixture / "origin.json").read_text())["root"]
    shutil.copytree(fixture / "mlflow", tmp_path / "mlflow")
    db = tmp_path / "mlflow" / "mlflow.db"
    with sqlite3.connect(db) as con:
        for table, columns in PATH_COLUMNS.items():
            for col in columns:
                con.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (origin, str(tmp_path)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure(tmp_path / "mlflow")
    return tmp_path


@pytest.fixture(params=STORES)
def store(request, tmp_path, monkeypatch):
    before = mlflow.get_tracking_uri()
    fixture = FIXTURES / request.param
    yield fixture, open_store(fixture, tmp_path, monkeypatch)
    mlflow.set_tracking_uri(before)
    mlflow.set_registry_uri(before)


@pytest.fixture
def legacy_store(tmp_path, monkeypatch):
    before = mlflow.get_tracking_uri()
    yield open_store(FIXTURES / "legacy-registry", tmp_path, monkeypatch)
    mlflow.set_tracking_uri(before)
    mlflow.set_registry_uri(before)


def _predict(version: str) -> np.ndarray:
    uri = f"models:/stfn-moving-digits/{version}"
    model = mlflow.pyfunc.load_model(uri)
    example = json.loads((Path(mlflow.artifacts.download_artifacts(uri)) / "serving_input_example.json").read_text())[
        "inputs"
    ]
    inputs = {"series": np.asarray(example["series"], np.float32), "frames": np.asarray(example["frames"], np.uint8)}
    return np.asarray(model.predict(inputs))


def test_earlier_versions_load_predict_and_roll_back(store):
    fixture, _ = store
    expected = json.loads((fixture / "expected_predictions.json").read_text())
    name = "stfn-moving-digits"
    assert str(registry.champion(name).version) == "2"
    np.testing.assert_allclose(_predict("2"), np.asarray(expected["2"]), atol=1e-6)
    assert registry.rollback(name) == ("2", "1")
    assert str(registry.champion(name).version) == "1"
    np.testing.assert_allclose(_predict("1"), np.asarray(expected["1"]), atol=1e-6)
    assert not np.allclose(expected["1"], expected["2"])  # the rollback is visible in the answers


def test_an_earlier_champion_is_served_from_the_projects_venv(store):
    """`stfn serve` loads it beside this checkout's modules and answers as it did."""
    from starlette.testclient import TestClient

    from stfn.endpoint import VERSION_HEADER, Endpoint

    fixture, _ = store
    expected = json.loads((fixture / "expected_predictions.json").read_text())
    endpoint = Endpoint("stfn-moving-digits", follow_seconds=3600)
    assert endpoint.current.version == "2"
    example = Path(mlflow.artifacts.download_artifacts("models:/stfn-moving-digits/2")) / "serving_input_example.json"
    with TestClient(endpoint) as client:
        r = client.post("/invocations", content=example.read_bytes(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers[VERSION_HEADER] == "2"
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), np.asarray(expected["2"]), atol=1e-6)


def test_monitoring_a_champion_without_reference_statistics_is_refused_with_the_way_out(legacy_store, tiny_dataset):
    """A champion registered before monitoring existed carries no reference statistics: bad
    input, saying how to get them (retrain, or pass the file), before the batch is read; nothing
    written."""
    from stfn.config import Params, Paths
    from stfn.errors import DataValidationError
    from stfn.stages.monitor import monitor

    with pytest.raises(DataValidationError, match="registered before monitoring existed") as err:
        monitor(Params(), Paths(legacy_store), tiny_dataset, "moving-digits")
    assert "version 2 of stfn-moving-digits" in str(err.value) and "--reference FILE" in str(err.value)
    assert not (legacy_store / "reports").exists()
