"""The german-pm10 importer on the real file (spacetime's air.rda from Debian's r-cran-spacetime,
fetched with `apt-get download`): a real record with real gaps, in the contract; and, under
`make test-all`, the docs' claim that with default settings STFN is never worse than the
simple baselines on the four real recordings the project imports (the point estimate, on the
same test rows; benchmarks/real_records.py measures the margin's interval for the docs)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recordings import imported  # tests/integration/recordings.py

REPO = Path(__file__).resolve().parents[2]
RECORDS = ("irish-wind", "german-pm10", "colorado-temperature", "southern-germany-flu")


@pytest.fixture(scope="module")
def pm10_dataset(tmp_path_factory, need) -> Path:
    return imported(tmp_path_factory, need, "german-pm10")


@pytest.mark.slow
def test_the_real_record_with_its_gaps_becomes_a_dataset_in_the_contract(pm10_dataset, tmp_path):
    from stfn.data.contract import load_spec, open_frames
    from stfn.errors import DataValidationError
    from stfn.validation import validate_dataset

    spec = load_spec(pm10_dataset)
    assert spec.task == "regression" and spec.target.channel == "DEUB029" and spec.target.unit == "ug/m3"
    assert len(spec.channel_names) == 31 and spec.series.steps == 14 and spec.frames.steps == [11, 12, 13]
    assert len(spec.sensors) == 31 and spec.source["package"] == "r-cran-spacetime" and spec.source["md5"]
    samples = pd.read_parquet(pm10_dataset / "samples.parquet")
    assert len(samples) == 2811 and samples["label"].notna().all()  # days of 2002-2009 with a DEUB029 reading
    assert samples["split"].value_counts().to_dict() == {"train": 2114, "val": 352, "test": 345}
    years = samples.groupby("split")["timestamp"].agg(["min", "max"])
    assert years.loc["train", "max"] < years.loc["val", "min"] and years.loc["val", "max"] < years.loc["test", "min"]
    series = pd.read_parquet(pm10_dataset / "series.parquet")
    missing = series[spec.channel_names].isna().mean()
    assert 0.0 < missing.min() and 0.20 < missing.max() <= 0.25  # the real gaps, kept as NaN
    assert (missing > 0.05).sum() == 10
    frames = open_frames(pm10_dataset, spec)
    assert frames.shape == (2811, 3, 1, 32, 32) and np.isfinite(frames).all()  # maps over the stations that reported
    with pytest.raises(DataValidationError, match="max_missing_ratio"):
        validate_dataset(pm10_dataset, 0.05, tmp_path / "report.json")
    from stfn.config import DataParams

    assert validate_dataset(pm10_dataset, DataParams().max_missing_ratio, tmp_path / "report.json").success


@pytest.mark.slow
@pytest.mark.thorough
@pytest.mark.parametrize("name", RECORDS)
def test_with_default_settings_stfn_is_never_worse_than_the_baselines(name, tmp_path_factory, need, tmp_path):
    """The docs' table: the repo's params.yaml as it is, STFN's test MAE at most the best
    baseline's."""
    from flows.training_pipeline import training_pipeline

    folder = imported(tmp_path_factory, need, name)
    shutil.copytree(folder, tmp_path / "data" / "raw" / name)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    result = training_pipeline(overrides=[f"data.dataset={name}"], root=str(tmp_path))
    m = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    best = min(b["test"]["mae"] for b in m["baselines"].values())
    assert m["test"]["mae"] <= best, (m["test"], m["baselines"])
    assert m["versus_baselines"]["stfn_wins"] and result["settings"][1].startswith("model.linear_skip=true (auto")
