"""The southern-germany-flu importer on the real files: surveillance's fluBYBW.RData (an S4 `sts`
object) and its district map shapes/districtsD.RData from Debian's r-cran-surveillance (fetched
with `apt-get download`), weekly counts, in the contract. No training: a few seconds, the download
included, so `make test` runs it (slow), like test_german_pm10. The reader and builder on
synthetic records: tests/data/test_seasonal.py."""

import numpy as np
import pandas as pd
import pytest
from recordings import CACHES, imported, validates, years_in_order

from stfn.data import seasonal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flu(tmp_path_factory, need):
    return imported(tmp_path_factory, need, "southern-germany-flu")


def test_southern_germany_weekly_flu_counts_become_a_dataset_in_the_contract(flu, tmp_path):
    from stfn.data.contract import load_spec, open_frames

    spec = load_spec(flu)
    assert spec.target.channel == "9162" and spec.target.unit == "cases"  # SK Muenchen, the most cases
    assert spec.channel_names[:3] == ["9162", "8111", "9184"]  # Munich, Stuttgart, Munich's district
    assert len(spec.channel_names) == 20 and spec.series.steps == 12 and spec.frames.steps == [9, 10, 11]
    assert spec.series.channels[0].min == 0.0 and spec.source["package"] == "r-cran-surveillance"
    assert len(spec.source["md5"]) == 32 and len(spec.source["positions_md5"]) == 32
    samples = pd.read_parquet(flu / "samples.parquet")
    assert len(samples) == 416 - 12 and (samples["label"] >= 0).all()
    assert samples["split"].value_counts().to_dict() == {"train": 300, "val": 52, "test": 52} and years_in_order(
        samples
    )
    assert samples["timestamp"].dt.dayofweek.eq(3).all()  # the Thursday of each week
    assert samples["timestamp"].diff().dropna().dt.days.value_counts().to_dict() == {7: 402, 14: 1}  # 2004's W53
    peak = samples.loc[samples["label"].idxmax()]
    assert peak["label"] == 109 and peak["sample_id"] == "2007-02-22"  # 2007's week 8
    series = pd.read_parquet(flu / "series.parquet")
    assert series[spec.channel_names].notna().all().all()
    frames = open_frames(flu, spec)
    assert frames.shape == (404, 3, 1, 32, 32) and np.isfinite(frames).all() and frames.min() >= 0
    assert validates(flu, tmp_path)


def test_district_positions_are_where_the_cities_are(flu):
    """The label points of districtsD (LAEA, km) as lon/lat: the cities' districts at the cities."""
    shapes = CACHES["southern-germany-flu"] / "unpacked" / seasonal.DISTRICTS.rda
    where = seasonal.district_positions(shapes).set_index("key")
    for key, (lat, lon) in {"09162": (48.14, 11.58), "08111": (48.78, 9.18), "09564": (49.45, 11.08)}.items():
        assert abs(where.loc[key, "lat"] - lat) < 0.05 and abs(where.loc[key, "lon"] - lon) < 0.05, where.loc[key]
