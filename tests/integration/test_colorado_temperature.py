"""The colorado-temperature importer on the real file: fields' COmonthlyMet.rda from Debian's
r-cran-fields (fetched with `apt-get download`), monthly temperatures with real gaps, in the
contract. No training: a few seconds, the download included, so `make test` runs it (slow), like
test_german_pm10. The reader and builder on synthetic records: tests/data/test_seasonal.py."""

import numpy as np
import pandas as pd
import pytest
from recordings import imported, validates, years_in_order

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def colorado(tmp_path_factory, need):
    return imported(tmp_path_factory, need, "colorado-temperature")


def test_colorado_monthly_temperature_with_its_gaps_becomes_a_dataset_in_the_contract(colorado, tmp_path):
    from stfn.data.contract import load_spec, open_frames

    spec = load_spec(colorado)
    assert spec.task == "regression" and spec.target.channel == "050848" and spec.target.unit == "degC"  # Boulder
    assert len(spec.channel_names) == 20 and spec.series.steps == 12 and spec.frames.steps == [9, 10, 11]
    assert spec.series.channels[0].min < -30 and spec.source["package"] == "r-cran-fields"
    assert len(spec.source["md5"]) == 32 and spec.source["file"] == "fields data/COmonthlyMet.rda"
    samples = pd.read_parquet(colorado / "samples.parquet")
    assert len(samples) == 1221 and samples["label"].notna().all()  # Jan 1896-Dec 1997 less 3 months without Boulder
    assert samples["split"].value_counts().to_dict() == {"train": 851, "test": 192, "val": 178}
    assert samples["sample_id"].iloc[0] == "1896-01-01" and years_in_order(samples)
    assert samples["timestamp"].diff().dropna().dt.days.isin([28, 29, 30, 31, 59, 61, 62]).all()  # months
    by_month = samples.groupby(samples["timestamp"].dt.month)["label"].mean()
    assert by_month[7] - by_month[1] > 15 and samples["label"].min() < 0  # the yearly cycle
    series = pd.read_parquet(colorado / "series.parquet")
    missing = series[spec.channel_names].isna().mean()
    assert (missing > 0).all() and missing.max() < 0.02  # every station has gaps, kept as NaN; few
    frames = open_frames(colorado, spec)
    assert frames.shape == (1221, 3, 1, 32, 32) and np.isfinite(frames).all()
    assert validates(colorado, tmp_path)
