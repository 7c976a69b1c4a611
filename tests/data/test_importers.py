"""The irish-wind importer on a synthetic daily table (fast), its error messages, and the CLI
where apt-get is unavailable. The real file is tested in tests/integration/test_irish_wind.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stfn.data import importers
from stfn.data.contract import write_dataset
from stfn.validation import validate_dataset

STATIONS = pd.DataFrame(
    {
        "code": ["VAL", "DUB", "MAL"],
        "name": ["Valentia", "Dublin", "Malin Head"],
        "lat": [51.933, 53.433, 55.367],
        "lon": [-10.25, -6.25, -7.333],
    }
)


def daily(days: int = 40, start: str = "1973-12-01") -> pd.DataFrame:
    dates = pd.date_range(start, periods=days, freq="D")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.uniform(0, 30, size=(days, 3)).astype(np.float32), columns=STATIONS["code"])
    table.insert(0, "date", dates)
    return table


@pytest.mark.parametrize(
    "text, value",
    [("51d56'N", 51 + 56 / 60), ("10d15'W", -(10 + 15 / 60)), ("52d16'56.791\"N", 52 + 16 / 60 + 56.791 / 3600)],
)
def test_station_coordinates_are_parsed(text, value):
    assert importers.parse_dms(text) == pytest.approx(value)


def test_unreadable_coordinate_is_a_clear_error():
    with pytest.raises(importers.ImportError_, match="51.93"):
        importers.parse_dms("51.93")


def test_samples_windows_frames_target_and_split_by_year(tmp_path):
    table = daily()
    spec, samples, series, frames = importers.build_irish_wind(table, STATIONS)
    n = len(table) - importers.HISTORY_DAYS  # every day with 14 days of history and a next day
    assert len(samples) == n and frames.shape == (n, 3, 1, 32, 32) and spec.frames.steps == [11, 12, 13]
    first = samples.iloc[0]
    assert first["sample_id"] == "1973-12-15" and first["label"] == pytest.approx(table["DUB"].iloc[14])
    window = series[series["sample_id"] == first["sample_id"]].sort_values("step")
    assert np.allclose(window["DUB"], table["DUB"].iloc[:14]) and spec.target.channel == "DUB"
    # split by the target day's year: December 1973 is train, January 1974 is val
    assert set(samples.loc[samples["timestamp"].dt.year == 1973, "split"]) == {"train"}
    assert set(samples.loc[samples["timestamp"].dt.year == 1974, "split"]) == {"val"}
    # the frame at a station's grid cell is dominated by that station (inverse-distance weights)
    row, col = (np.array(spec.sensors["MAL"]) * 32).astype(int)
    last_frame = frames[0, -1, 0]
    assert abs(last_frame[row, col] - table["MAL"].iloc[13]) < abs(last_frame[row, col] - table["VAL"].iloc[13])
    folder = write_dataset(tmp_path / "irish-wind", spec, samples, series, frames)
    report = validate_dataset(folder, 0.05, tmp_path / "report.json")
    assert report.summary()["n_samples"] == n


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(importers.ImportError_, match="no such file"):
        importers.find_rda(tmp_path / "nope.rda", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(importers.ImportError_, match="holds no wind.rda"):
        importers.find_rda(tmp_path / "empty", tmp_path / "cache")


def test_a_file_that_is_not_r_data_is_refused(tmp_path):
    bad = tmp_path / "wind.rda"
    bad.write_bytes(b"not an R file")
    with pytest.raises(importers.ImportError_, match="not a readable R data file"):
        importers.read_wind(bad)


def test_without_apt_get_the_cli_says_what_to_do(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no /usr/bin: no apt-get, no dpkg-deb
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("stfn")), "import", "irish-wind"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "apt-get" in proc.stderr and "--source" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "raw" / "irish-wind").exists()


def test_a_failed_apt_download_is_a_clear_error_and_is_retried_after_an_update(tmp_path, monkeypatch):
    calls = []

    class Proc:
        returncode, stdout, stderr = 100, "", "E: Unable to locate package r-cran-gstat"

    def runner(cmd, **kwargs):
        calls.append(cmd[:2])
        return Proc()

    monkeypatch.setattr(importers.shutil, "which", lambda exe: f"/usr/bin/{exe}")
    monkeypatch.setattr(importers.os, "geteuid", lambda: 0)
    with pytest.raises(importers.ImportError_, match="Unable to locate package.*--source PATH"):
        importers.find_rda(None, tmp_path / "cache", runner)
    assert calls == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]


def test_maps_interpolate_over_the_stations_that_reported_and_gaps_stay_missing(tmp_path):
    """A station record with gaps: the maps weigh only the stations that reported that day, the
    series keep the gaps as NaN, and a day whose target reading is missing makes no sample."""
    table = daily(60)
    table.loc[20:29, "MAL"] = np.nan  # a 10-day outage at Malin Head
    table.loc[40, "DUB"] = np.nan  # one missing target reading
    weights = importers.idw_weights(STATIONS)
    maps = importers.interpolate(table[list(STATIONS["code"])].to_numpy(), weights)
    both = importers.interpolate(table.loc[25:25, ["VAL", "DUB"]].to_numpy(), weights[:, [0, 1]])
    without_mal = (weights[:, [0, 1]] / weights[:, [0, 1]].sum(1, keepdims=True)).astype(np.float32)
    assert np.allclose(maps[25], both[0]) and np.allclose(both[0].ravel(), without_mal @ table.loc[25, ["VAL", "DUB"]])
    assert np.isfinite(maps).all()
    spec, samples, series, frames = importers.build_irish_wind(table, STATIONS)
    assert "1974-01-10" not in set(samples["sample_id"])  # day 40 (2 Jan + 38) has no DUB reading: no sample
    assert len(samples) == len(table) - importers.HISTORY_DAYS - 1
    assert series["MAL"].isna().any() and samples["label"].notna().all() and np.isfinite(frames).all()
    folder = write_dataset(tmp_path / "irish-wind", spec, samples, series, frames)
    with pytest.raises(Exception, match="max_missing_ratio"):  # MAL misses more than 5 % of its readings
        validate_dataset(folder, 0.05, tmp_path / "report.json")
    assert validate_dataset(folder, 0.5, tmp_path / "report.json").success


def test_stations_are_kept_by_their_share_of_missing_days():
    table = daily(100, start="2001-12-01")
    table.loc[40:70, "VAL"] = np.nan  # 31 of the 69 days of 2002 missing: 45 %
    table.loc[40:45, "MAL"] = np.nan  # 6 days: 9 %
    days, kept = importers.select_stations(table, STATIONS, years=(2002, 2002), max_missing=0.25)
    assert list(kept["code"]) == ["DUB", "MAL"] and list(days.columns) == ["date", "DUB", "MAL"]
    assert days["date"].dt.year.unique().tolist() == [2002]


def test_a_german_pm10_file_that_is_not_r_data_is_refused(tmp_path):
    bad = tmp_path / "air.rda"
    bad.write_bytes(b"RDX3\nnot really")
    with pytest.raises(importers.ImportError_, match="air.rda: not a readable R data file"):
        importers.read_air(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(importers.ImportError_, match="holds no air.rda and no r-cran-spacetime"):
        importers.find_rda(tmp_path / "empty", tmp_path / "cache", package=importers.SPACETIME)
