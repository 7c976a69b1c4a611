"""The irish-wind importer on the real file (gstat's wind.rda from Debian's r-cran-gstat,
fetched with `apt-get download`), then the regression flow on it with its baselines."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".stfn" / "cache" / "irish-wind"  # the download cache `stfn import` uses too (git-ignored)


@pytest.fixture(scope="module")
def wind_dataset(tmp_path_factory, need) -> Path:
    from stfn.data import importers

    if shutil.which("apt-get") is None and not (CACHE / "unpacked" / importers.RDA_IN_DEB).is_file():
        need(
            "apt-get not available and no cached r-cran-gstat: cannot fetch wind.rda",
            "needs apt-get (Debian/Ubuntu) to fetch r-cran-gstat (`apt-get download r-cran-gstat`),"
            f" or its unpacked package under {CACHE / 'unpacked'}",
        )
    root = tmp_path_factory.mktemp("wind")
    folder, _ = importers.import_irish_wind(root / "data" / "raw" / "irish-wind", CACHE)
    return folder


@pytest.mark.slow
def test_real_record_becomes_a_dataset_in_the_contract(wind_dataset, tmp_path):
    from stfn.data.contract import load_spec, open_frames
    from stfn.validation import validate_dataset

    spec = load_spec(wind_dataset)
    assert spec.task == "regression" and spec.target.channel == "DUB" and spec.target.unit == "knots"
    assert len(spec.channel_names) == 12 and spec.series.steps == 14 and spec.frames.steps == [11, 12, 13]
    assert len(spec.sensors) == 12 and spec.source["md5"]
    samples = pd.read_parquet(wind_dataset / "samples.parquet")
    assert (
        len(samples) == 6574 - 14
    )  # 18 years of days, less the first 13 (no 14-day history) and the last (no next day)
    assert samples["split"].value_counts().to_dict() == {"train": 4734, "test": 1096, "val": 730}
    first = samples.iloc[0]
    assert first["sample_id"] == "1961-01-15" and first["label"] == pytest.approx(2.50)  # DUB, 15 Jan 1961
    years = samples.groupby("split")["timestamp"].agg(["min", "max"])
    assert years.loc["train", "max"] < years.loc["val", "min"] and years.loc["val", "max"] < years.loc["test", "min"]
    frames = open_frames(wind_dataset, spec)
    assert frames.shape == (6560, 3, 1, 32, 32) and np.isfinite(frames[:100]).all()
    report = validate_dataset(wind_dataset, 0.05, tmp_path / "report.json")
    assert report.summary()["n_samples"] == 6560


@pytest.fixture
def own_registry(tmp_path, monkeypatch):
    """A tracking store of the test's own: the session's may already hold an stfn-irish-wind
    champion (make test-all's never-worse-than-the-baselines run, on the same worker), which a
    one-epoch run would not beat."""
    import mlflow

    before = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'own-mlflow' / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    (tmp_path / "own-mlflow").mkdir()
    yield
    mlflow.set_tracking_uri(before)
    mlflow.set_registry_uri(before)


@pytest.mark.slow
def test_regression_flow_on_the_real_record_with_baselines(wind_dataset, tmp_path, write_tiny_params, own_registry):
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient

    shutil.copytree(wind_dataset, tmp_path / "data" / "raw" / "irish-wind")
    write_tiny_params(tmp_path / "params.yaml")
    # command-line overrides win over params.yaml's `datasets.irish-wind` section
    result = training_pipeline(
        overrides=["data.dataset=irish-wind", "train.epochs=1", "model.dim=16", "model.attention_hidden=16"],
        root=str(tmp_path),
    )
    m = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert m["primary_metric"] == "mae" and set(m["baselines"]) == {"persistence", "climatology", "ridge"}
    for b in m["baselines"].values():
        assert 1.0 < b["test"]["mae"] < 6.0  # knots: daily wind at Dublin
    assert m["baselines"]["ridge"]["test"]["mae"] < m["baselines"]["persistence"]["test"]["mae"]
    version = MlflowClient().get_model_version_by_alias("stfn-irish-wind", "champion")
    assert str(version.version) == str(result["version"])

    # online equals batch for a regression model too: the endpoint's values (in the target's unit)
    # against `stfn predict`'s, row for row, missing readings sent as JSON null
    import numpy as np
    import pandas as pd
    from starlette.testclient import TestClient

    from stfn.data import contract
    from stfn.endpoint import VERSION_HEADER, Endpoint
    from stfn.predict import batch_predict, select_rows

    folder = tmp_path / "data" / "raw" / "irish-wind"
    batch_predict(folder, tmp_path / "predictions.parquet", "stfn-irish-wind", split="test")
    table = pd.read_parquet(tmp_path / "predictions.parquet")
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    rows = select_rows(folder, spec, samples, "test")
    ids = samples["sample_id"].astype(str).iloc[rows]
    assert list(ids) == list(table["sample_id"])
    series = contract.series_array(contract.read_parquet(folder, contract.SERIES_FILE, spec.name), ids, spec)
    frames = np.asarray(contract.open_frames(folder, spec, len(samples))[rows])
    stamps = [t.isoformat() for t in samples["timestamp"].iloc[rows]]  # the model takes them (its calendar)
    online = []
    with TestClient(Endpoint("stfn-irish-wind", follow_seconds=3600)) as client:
        for i in range(0, len(rows), 64):
            s = np.where(np.isnan(series[i : i + 64]), None, series[i : i + 64].astype(object)).tolist()
            inputs = {"series": s, "frames": frames[i : i + 64].tolist(), "timestamp": stamps[i : i + 64]}
            body = json.dumps({"inputs": inputs})
            r = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.headers[VERSION_HEADER] == str(result["version"]), r.text[:500]
            online.append(np.asarray(r.json()["predictions"], np.float64))
    np.testing.assert_allclose(np.concatenate(online), table["prediction"].to_numpy(), rtol=1e-5)
