"""The seasonal importers (colorado-temperature: monthly, southern-germany-flu: weekly) on small
synthetic records (fast, no network): their rules (stations kept, target, split by year), the
monthly and weekly calendars, the district positions' projection, the datasets they build, their
error messages, and the CLI that lists them. The real files: tests/integration/test_seasonal.py."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stfn.data import seasonal
from stfn.data.contract import write_dataset
from stfn.data.importers import ImportError_, build_station_dataset
from stfn.validation import validate_dataset

STATIONS = pd.DataFrame(
    {
        "code": ["050848", "053005", "052432", "059243"],
        "name": ["BOULDER", "FORT COLLINS", "DURANGO", "WRAY"],
        "lat": [40.0, 40.58, 37.28, 40.07],
        "lon": [-105.27, -105.08, -107.88, -102.23],
    }
)


def monthly(years: int = 10, start: int = 1950) -> pd.DataFrame:
    """A monthly record with a yearly cycle around 10 degC (January coldest) and some noise."""
    rng = np.random.default_rng(0)
    month = np.tile(np.arange(12), years)
    cycle = 10 - 12 * np.cos(2 * np.pi * month / 12)
    values = cycle[:, None] + rng.normal(0, 1, (years * 12, len(STATIONS)))
    table = pd.DataFrame(values.astype(np.float32), columns=STATIONS["code"])
    table.insert(0, "date", pd.date_range(f"{start}-01-01", periods=years * 12, freq="MS"))
    return table


def weekly(weeks: int = 3 * 52) -> pd.DataFrame:
    """Weekly counts with a winter peak, numbered 52 a year from week 1 of 2001."""
    rng = np.random.default_rng(1)
    peak = 20 * np.exp(-(((np.arange(weeks) % 52) - 8) ** 2) / 20)
    table = pd.DataFrame(rng.poisson(peak[:, None] * [4, 1, 2, 3]).astype(np.float32), columns=STATIONS["code"])
    table.insert(0, "date", seasonal.week_dates(2001, 1, weeks))
    return table


@pytest.mark.parametrize(
    "first, last, split",
    [
        (1896, 1997, {"train": (1896, 1966), "val": (1967, 1981), "test": (1982, 1997)}),  # 102 years: 71 / 15 / 16
        (2001, 2008, {"train": (2001, 2006), "val": (2007, 2007), "test": (2008, 2008)}),  # 8 years: 6 / 1 / 1
        (2001, 2003, {"train": (2001, 2001), "val": (2002, 2002), "test": (2003, 2003)}),  # each at least a year
    ],
)
def test_the_target_years_split_in_time_70_15_15(first, last, split):
    assert seasonal.year_split(first, last) == split


def test_a_record_too_short_to_split_by_year_is_a_clear_error():
    with pytest.raises(ImportError_, match="span 2 year.*needs 3"):
        seasonal.year_split(2001, 2002)
    assert seasonal.spans({"train": (2001, 2006), "val": (2007, 2007)}) == "train 2001-2006, val 2007"


def test_monthly_arrays_become_a_table_of_consecutive_months_with_their_gaps():
    years = np.array([1895, 1896])
    tmax = np.arange(2 * 12 * 3, dtype=float).reshape(2, 12, 3)  # [years, months, stations]
    tmin = tmax - 4
    tmax[1, 6, 2] = np.nan  # July 1896 at the third station: no maximum, so no mean either
    table = seasonal.monthly_table(tmax, tmin, years, ["a", "b", "c"])
    assert list(table.columns) == ["date", "a", "b", "c"] and len(table) == 24
    assert table["date"].iloc[0] == pd.Timestamp("1895-01-01") and table["date"].iloc[-1] == pd.Timestamp("1896-12-01")
    row = table.set_index("date").loc["1896-03-01"]  # year 1, month index 2
    assert row["b"] == pytest.approx((tmax[1, 2, 1] + tmin[1, 2, 1]) / 2)
    assert np.isnan(table.set_index("date").loc["1896-07-01", "c"]) and table["c"].isna().sum() == 1
    with pytest.raises(ImportError_, match="12"):
        seasonal.monthly_table(tmax[:, :6], tmin[:, :6], years, ["a", "b", "c"])
    with pytest.raises(ImportError_, match="consecutive years"):
        seasonal.monthly_table(tmax, tmin, np.array([1895, 1897]), ["a", "b", "c"])


def test_stations_kept_by_fewest_gaps_and_districts_by_most_cases():
    table = monthly(3)
    table.loc[0:5, "053005"] = np.nan
    table.loc[0:1, "059243"] = np.nan
    days, kept = seasonal.select_complete(table, STATIONS, keep=3)
    assert list(kept["code"]) == ["050848", "052432", "059243"]  # the record's order, the gappiest left out
    assert list(days.columns) == ["date", "050848", "052432", "059243"]
    counts = table.copy()
    counts[list(STATIONS["code"])] = [[1, 5, 0, 5]] * len(table)  # ties (5, 5): the record's order
    _, busiest = seasonal.select_busiest(counts, STATIONS, keep=2)
    assert list(busiest["code"]) == ["053005", "059243"]
    assert seasonal.central(STATIONS) == "050848"  # Boulder: nearest the four's mean position


def test_a_monthly_record_becomes_samples_of_12_months_with_negative_temperatures(tmp_path):
    table = monthly(10)  # 1950-1959: targets 1951-1959
    table.loc[30:33, "059243"] = np.nan  # a 4-month outage at Wray
    table.loc[50, "050848"] = np.nan  # one missing target month: no sample
    layout = seasonal.colorado_layout(table, STATIONS, "050848")
    assert layout.split_years == {"train": (1951, 1956), "val": (1957, 1957), "test": (1958, 1959)}
    spec, samples, series, frames = build_station_dataset(table, STATIONS, layout, "colorado-temperature", {})
    n = len(table) - seasonal.HISTORY - 1
    assert len(samples) == n and frames.shape == (n, 3, 1, 32, 32) and spec.frames.steps == [9, 10, 11]
    assert spec.series.steps == 12 and spec.series.channels[0].min == -60.0 and spec.target.unit == "degC"
    first = samples.iloc[0]
    assert first["sample_id"] == "1951-01-01" and first["label"] == pytest.approx(table["050848"].iloc[12])
    assert "1954-03-01" not in set(samples["sample_id"])  # row 50: March 1954, no Boulder reading
    window = series[series["sample_id"] == "1951-01-01"].sort_values("step")
    assert np.allclose(window["050848"], table["050848"].iloc[:12])
    assert set(samples["timestamp"].diff().dropna().dt.days) <= {28, 29, 30, 31, 59, 60, 61, 62}  # months
    assert (samples["label"] < 0).any() and np.isfinite(frames).all() and series["059243"].isna().sum() > 0
    assert samples.groupby("split")["timestamp"].min().dt.year.to_dict() == {"train": 1951, "val": 1957, "test": 1958}
    folder = write_dataset(tmp_path / "colorado-temperature", spec, samples, series, frames)
    assert validate_dataset(folder, 0.30, tmp_path / "report.json").success  # below 0 degC is within the bounds


def test_weeks_are_numbered_52_a_year_and_stamped_with_their_thursday():
    dates = seasonal.week_dates(2001, 1, 416)
    assert dates[0] == pd.Timestamp("2001-01-04") and dates[52] == pd.Timestamp("2002-01-03")
    assert (dates.year == 2001 + np.arange(416) // 52).all()  # the Thursday lies in the week's own year
    gaps = pd.Series(dates).diff().dropna().dt.days
    assert gaps.value_counts().to_dict() == {7: 414, 14: 1}  # 2004 had an ISO week 53: no row for it
    assert dates[4 * 52 - 1] == pd.Timestamp("2004-12-23") and dates[4 * 52] == pd.Timestamp("2005-01-06")


def test_district_positions_are_unprojected_from_lambert_azimuthal_equal_area():
    params = seasonal._laea(
        "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=km +no_defs", Path("d")
    )
    assert params == {"lat_0": 52.0, "lon_0": 10.0, "x_0": 4321.0, "y_0": 3210.0}
    # EPSG Guidance Note 7-2's example for ETRS89-LAEA: 50 N, 5 E is E 3962799.45 m, N 2999718.85 m
    lon, lat = seasonal.laea_to_lonlat(np.array([3962.79945, 4321.0]), np.array([2999.71885, 3210.0]), **params)
    assert np.allclose(lon, [5.0, 10.0], atol=1e-6) and np.allclose(lat, [50.0, 52.0], atol=1e-6)
    with pytest.raises(ImportError_, match="laea"):
        seasonal._laea("+proj=longlat +ellps=WGS84", Path("d"))


def test_a_weekly_count_record_becomes_a_dataset_with_counts_at_least_zero(tmp_path):
    table = weekly()
    _, districts = seasonal.select_busiest(table, STATIONS)
    layout = seasonal.flu_layout(table, districts, str(districts["code"].iloc[0]))
    spec, samples, series, frames = build_station_dataset(table, districts, layout, "southern-germany-flu", {})
    assert spec.target.unit == "cases" and spec.series.channels[0].min == 0.0 and spec.series.channels[0].max >= 1e4
    assert layout.split_years == {"train": (2001, 2001), "val": (2002, 2002), "test": (2003, 2003)}
    assert len(samples) == len(table) - seasonal.HISTORY and samples["timestamp"].dt.dayofweek.eq(3).all()  # Thursdays
    assert "train 2001, val 2002, test 2003" in spec.description
    folder = write_dataset(tmp_path / "southern-germany-flu", spec, samples, series, frames)
    assert validate_dataset(folder, 0.30, tmp_path / "report.json").success


def test_the_importers_find_the_file_write_the_dataset_and_record_the_source(tmp_path, monkeypatch):
    """The import functions on the package's layout (the readers replaced by synthetic records):
    the files found beside each other, the md5 recorded, the dataset written."""
    package = tmp_path / "surveillance"
    for rel in ("data/fluBYBW.RData", "shapes/districtsD.RData"):
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_bytes(rel.encode())
    counts = weekly()
    seen = []
    monkeypatch.setattr(seasonal, "read_flu", lambda rda, shapes: seen.append((rda, shapes)) or (counts, STATIONS))
    for source in (package, package / "data" / "fluBYBW.RData"):  # the unpacked package, or its data file
        folder, spec = seasonal.import_southern_germany_flu(tmp_path / "out" / "flu", tmp_path / "cache", source)
        assert seen[-1] == (package / "data" / "fluBYBW.RData", package / "shapes" / "districtsD.RData")
        assert spec.source["package"] == "r-cran-surveillance" and spec.source["positions"].endswith("districtsD.RData")
        assert spec.source["md5"] == hashlib.md5(b"data/fluBYBW.RData").hexdigest()
        assert spec.source["positions_md5"] == hashlib.md5(b"shapes/districtsD.RData").hexdigest()
        assert (folder / "frames.npy").is_file()
    rda = tmp_path / "COmonthlyMet.rda"
    rda.write_bytes(b"x")
    monkeypatch.setattr(seasonal, "read_colorado", lambda path: (monthly(10), STATIONS))
    folder, spec = seasonal.import_colorado_temperature(tmp_path / "out" / "co", tmp_path / "cache", rda)
    assert spec.target.channel == "050848" and spec.source["md5"] == hashlib.md5(b"x").hexdigest()
    assert spec.source["file"] == "fields data/COmonthlyMet.rda" and spec.source["package"] == "r-cran-fields"


def test_unreadable_or_missing_files_are_named(tmp_path):
    bad = tmp_path / "COmonthlyMet.rda"
    bad.write_bytes(b"RDX3\nnot really")
    with pytest.raises(ImportError_, match="COmonthlyMet.rda: not a readable R data file"):
        seasonal.read_colorado(bad)
    flu = tmp_path / "fluBYBW.RData"
    flu.write_bytes(b"RDX2\nnot really")
    with pytest.raises(ImportError_, match="fluBYBW.RData: not a readable R data file"):
        seasonal.read_flu(flu, bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportError_, match="holds no fluBYBW.RData and no r-cran-surveillance"):
        seasonal.find_file(tmp_path / "empty", tmp_path / "cache", package=seasonal.FLU)
    lone = tmp_path / "lone" / "data" / "fluBYBW.RData"  # the data file without the package's shapes/ beside it
    lone.parent.mkdir(parents=True)
    lone.write_bytes(b"x")
    with pytest.raises(ImportError_, match="districtsD.RData: not found beside.*r-cran-surveillance .deb or its unpa"):
        seasonal.import_southern_germany_flu(tmp_path / "out", tmp_path / "cache", lone)


def test_the_cli_lists_the_seasonal_recordings_and_says_what_to_do_without_apt_get(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no apt-get, no dpkg-deb
    stfn = str(Path(sys.executable).with_name("stfn"))
    run = lambda name: subprocess.run(  # noqa: E731
        [stfn, "import", name], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    proc = run("no-such-recording")
    assert proc.returncode == 2 and "colorado-temperature" in proc.stderr and "southern-germany-flu" in proc.stderr
    proc = run("southern-germany-flu")
    assert proc.returncode == 2, proc.stderr
    assert "r-cran-surveillance" in proc.stderr and "--source" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "raw" / "southern-germany-flu").exists()
