"""Models registered before the house pass (#15) still load, predict and can be rolled back to.

`tests/fixtures/legacy-registry/` is an MLflow store made by the code of 1cdd486 (its
`make_fixture.py`): two versions of stfn-moving-digits whose logged `serving.py` imports that
code's module paths and whose checkpoints carry that code's config keys."""

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

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-registry"
# the columns of MLflow's store that hold the absolute paths of the folder the fixture was made in
PATH_COLUMNS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
    "datasets": ["dataset_source"],
}


@pytest.fixture
def legacy_store(tmp_path, monkeypatch):
    origin = json.loads((FIXTURE / "origin.json").read_text())["root"]
    shutil.copytree(FIXTURE / "mlflow", tmp_path / "mlflow")
    db = tmp_path / "mlflow" / "mlflow.db"
    with sqlite3.connect(db) as con:
        for table, columns in PATH_COLUMNS.items():
            for col in columns:
                con.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (origin, str(tmp_path)))
    before = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    tracking.configure(tmp_path / "mlflow")
    yield tmp_path
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


def test_legacy_versions_load_predict_and_roll_back(legacy_store):
    expected = json.loads((FIXTURE / "expected_predictions.json").read_text())
    name = "stfn-moving-digits"
    assert str(registry.champion(name).version) == "2"
    np.testing.assert_allclose(_predict("2"), np.asarray(expected["2"]), atol=1e-6)
    assert before_after(name) == ("2", "1")
    assert str(registry.champion(name).version) == "1"
    np.testing.assert_allclose(_predict("1"), np.asarray(expected["1"]), atol=1e-6)
    assert not np.allclose(expected["1"], expected["2"])  # the rollback is visible in the answers


def before_after(name: str) -> tuple[str, str]:
    return registry.rollback(name)


def test_a_legacy_champion_is_served_from_the_projects_venv(legacy_store):
    """Its folder carries no code: `stfn serve` loads it with this checkout's modules."""
    from starlette.testclient import TestClient

    from stfn.endpoint import VERSION_HEADER, Endpoint

    expected = json.loads((FIXTURE / "expected_predictions.json").read_text())
    endpoint = Endpoint("stfn-moving-digits", follow_seconds=3600)
    assert endpoint.current.version == "2"
    example = Path(mlflow.artifacts.download_artifacts("models:/stfn-moving-digits/2")) / "serving_input_example.json"
    with TestClient(endpoint) as client:
        r = client.post("/invocations", content=example.read_bytes(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers[VERSION_HEADER] == "2"
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), np.asarray(expected["2"]), atol=1e-6)


def test_monitoring_a_legacy_champion_is_refused_with_the_way_out(legacy_store, tiny_dataset):
    """A champion registered before #20 carries no reference statistics: bad input, saying how to
    get them (retrain, or pass the file), before the batch is read; nothing written."""
    from stfn.config import Params, Paths
    from stfn.errors import DataValidationError
    from stfn.stages.monitor import monitor

    with pytest.raises(DataValidationError, match="registered before monitoring existed") as err:
        monitor(Params(), Paths(legacy_store), tiny_dataset, "moving-digits")
    assert "version 2 of stfn-moving-digits" in str(err.value) and "--reference FILE" in str(err.value)
    assert not (legacy_store / "reports").exists()
