"""Importers: real recordings that ship inside a package, written as datasets in the contract.

`irish-wind`: daily mean wind speed (knots) at 12 Irish synoptic stations, 1961-1978
(Haslett & Raftery 1989, "Space-time modelling with long-memory dependence: assessing Ireland's
wind power resource"), shipped as `data/wind.rda` in the R package gstat (Debian: `r-cran-gstat`).

`german-pm10`: daily mean PM10 (ug/m3) at rural background stations of the German air quality
network, 1998-2009 (the European Environment Agency's AirBase, as shipped in `data/air.rda` of the
R package spacetime, Debian: `r-cran-spacetime`; Pebesma 2012, "spacetime: Spatio-Temporal Data
in R", J. Stat. Softw. 51(7)). A real record with real gaps.

Both are read without R (`pyreadr` for gstat's data frames, `rdata` for spacetime's matrix and
S4 station points), from a path the user gives or from the Debian package fetched with
`apt-get download` and unpacked with `dpkg-deb -x`. Each sample: the last 14 days at every station
(series) and the last 3 days interpolated onto a 32 x 32 grid by inverse-distance weighting over
the stations' real coordinates (frames); target: the next day's value at one station.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.data.contract import Channel, DatasetSpec, FramesSpec, SeriesSpec, Target, write_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """Where a recording ships: a Debian package and the R data file inside it."""

    deb: str
    rda: str  # the path inside the package
    recording: str  # the `stfn import` name

    @property
    def file(self) -> str:
        return Path(self.rda).name


GSTAT = Package("r-cran-gstat", "usr/lib/R/site-library/gstat/data/wind.rda", "irish-wind")
SPACETIME = Package("r-cran-spacetime", "usr/lib/R/site-library/spacetime/data/air.rda", "german-pm10")
DEB_PACKAGE, RDA_IN_DEB = GSTAT.deb, GSTAT.rda
TARGET_STATION = "DUB"  # Dublin Airport
HISTORY_DAYS = 14  # series T
FRAME_DAYS = 3  # frames F: the most recent days
GRID = 32  # frames are GRID x GRID
IDW_POWER = 2.0
# (lat_min, lat_max, lon_min, lon_max): Ireland with a margin around the 12 stations
BOUNDS = (51.3, 55.7, -10.7, -5.6)
SPLIT_YEARS = {"train": (1961, 1973), "val": (1974, 1975), "test": (1976, 1978)}


class ImportError_(RuntimeError):  # noqa: N801 - not the builtin ImportError
    """The source could not be obtained or read; the message says what to do."""


def parse_dms(text: str) -> float:
    """`51d56'N`, `10d15'W` or `52d16'56.791"N` -> signed decimal degrees (S and W negative)."""
    m = re.fullmatch(r"\s*(\d+)d(\d+)'(?:([\d.]+)\")?\s*([NSEW])\s*", str(text))
    if not m:
        raise ImportError_(f"wind.loc: cannot read the coordinate {text!r} (expected e.g. 51d56'N)")
    deg, minutes, seconds, hemi = m.groups()
    value = int(deg) + int(minutes) / 60 + float(seconds or 0) / 3600
    return -value if hemi in "SW" else value


def find_rda(
    source: Path | None, cache: Path, runner: Callable[..., Any] = subprocess.run, package: Package = GSTAT
) -> Path:
    """The path of the package's R data file (e.g. `wind.rda`): from `source` (the file itself, a
    .deb, or a folder holding either, e.g. an unpacked package), else from the cache, else fetched
    with apt-get."""
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise ImportError_(
                f"{source}: no such file or folder (give {package.file}, a {package.deb} .deb, or a folder)"
            )
        if source.is_file() and source.suffix == ".rda":
            return source
        if source.is_file() and source.suffix == ".deb":
            return _unpack_deb(source, cache, runner, package)
        if source.is_dir():
            found = sorted(source.rglob(package.file)) or sorted(source.rglob(f"{package.deb}_*.deb"))
            if found:
                return find_rda(found[0], cache, runner, package)
        raise ImportError_(f"{source}: holds no {package.file} and no {package.deb}_*.deb")
    cached = cache / "unpacked" / package.rda
    if cached.is_file():
        return cached
    return _unpack_deb(_apt_download(cache, runner, package), cache, runner, package)


def _apt_download(cache: Path, runner: Callable[..., Any], package: Package) -> Path:
    deb, again = package.deb, f"stfn import {package.recording} --source PATH"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ImportError_(
            f"apt-get/dpkg-deb not found: this is not a Debian/Ubuntu system. Download the Debian package "
            f"{deb} (https://packages.debian.org/{deb}) or its {package.file} from CRAN on another machine "
            f"and run: {again}"
        )
    cache.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s with apt-get download into %s", deb, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = runner(["apt-get", "download", deb], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # a fresh system may have no package lists yet: update them once (root only) and retry
            log.info("apt-get download failed; running apt-get update and trying again")
            runner(["apt-get", "update", "-q"], capture_output=True, text=True)
            proc = runner(["apt-get", "download", deb], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{deb}_*.deb"))
        if proc.returncode != 0 or not debs:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no .deb written"]
            raise ImportError_(
                f"`apt-get download {deb}` failed ({detail[0]}); try `sudo apt-get update` first, or, "
                f"without network access, give the file: {again}"
            )
        final = cache / debs[0].name
        debs[0].replace(final)
    return final


def _unpack_deb(deb: Path, cache: Path, runner: Callable[..., Any], package: Package) -> Path:
    if shutil.which("dpkg-deb") is None:
        raise ImportError_(f"{deb}: dpkg-deb not found to unpack it; give the {package.file} file itself with --source")
    out = cache / "unpacked"
    out.mkdir(parents=True, exist_ok=True)
    proc = runner(["dpkg-deb", "-x", str(deb), str(out)], capture_output=True, text=True)
    rda = out / package.rda
    if proc.returncode != 0 or not rda.is_file():
        raise ImportError_(f"{deb}: `dpkg-deb -x` did not give {package.rda} ({(proc.stderr or '').strip()})")
    return rda


def read_wind(rda: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(daily table: date + one column per station, stations: code, name, lat, lon)."""
    import pyreadr  # lazy: only this importer reads R data files

    try:
        objects = pyreadr.read_r(str(rda))
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise ImportError_(f"{rda}: not a readable R data file ({type(exc).__name__}: {exc})") from None
    if "wind" not in objects or "wind.loc" not in objects:
        raise ImportError_(f"{rda}: expected the objects 'wind' and 'wind.loc', found {sorted(objects)}")
    wind, loc = objects["wind"], objects["wind.loc"]
    stations = pd.DataFrame(
        {
            "code": loc["Code"].astype(str),
            "name": loc["Station"].astype(str),
            "lat": [parse_dms(v) for v in loc["Latitude"]],
            "lon": [parse_dms(v) for v in loc["Longitude"]],
        }
    )
    missing = [c for c in ("year", "month", "day", *stations["code"]) if c not in wind.columns]
    if missing:
        raise ImportError_(f"{rda}: table 'wind' lacks the columns {missing}")
    dates = pd.to_datetime(
        pd.DataFrame({"year": 1900 + wind["year"].astype(int), "month": wind["month"], "day": wind["day"]})
    )
    daily = wind[list(stations["code"])].astype(np.float32)
    daily.insert(0, "date", dates)
    if not dates.is_monotonic_increasing or dates.duplicated().any():
        raise ImportError_(f"{rda}: the days are not in order or repeat")
    return daily, stations


def idw_weights(
    stations: pd.DataFrame, grid: int = GRID, power: float = IDW_POWER, bounds: tuple[float, ...] = BOUNDS
) -> np.ndarray:
    """Inverse-distance weights [grid*grid, S] (rows sum to 1) from each grid cell's centre to the
    stations, distances in km on a local equirectangular projection."""
    lat_min, lat_max, lon_min, lon_max = bounds
    rows = lat_max - (np.arange(grid) + 0.5) / grid * (lat_max - lat_min)  # north at the top
    cols = lon_min + (np.arange(grid) + 0.5) / grid * (lon_max - lon_min)
    lat, lon = np.meshgrid(rows, cols, indexing="ij")
    k = 111.2  # km per degree of latitude
    coslat = np.cos(np.deg2rad((lat_min + lat_max) / 2))
    dy = (lat.reshape(-1, 1) - stations["lat"].to_numpy()[None]) * k
    dx = (lon.reshape(-1, 1) - stations["lon"].to_numpy()[None]) * k * coslat
    d = np.maximum(np.hypot(dx, dy), 1.0)
    w = d**-power
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def interpolate(values: np.ndarray, weights: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Daily maps [days, grid, grid] from station readings [days, S] by inverse-distance
    weighting over the stations that reported that day (the weights renormalised over them); a
    day without any reading gets the record's mean everywhere."""
    seen = np.isfinite(values)
    num = np.where(seen, values, 0.0).astype(np.float64) @ weights.T.astype(np.float64)  # [days, cells]
    den = seen.astype(np.float64) @ weights.T.astype(np.float64)
    fallback = float(np.nanmean(values)) if seen.any() else 0.0
    fields = np.where(den > 0, num / np.maximum(den, 1e-12), fallback)
    return fields.reshape(len(values), grid, grid).astype(np.float32)


def sensor_positions(stations: pd.DataFrame, bounds: tuple[float, ...] = BOUNDS) -> dict[str, tuple[float, float]]:
    lat_min, lat_max, lon_min, lon_max = bounds
    return {
        r.code: (
            round(float((lat_max - r.lat) / (lat_max - lat_min)), 4),
            round(float((r.lon - lon_min) / (lon_max - lon_min)), 4),
        )
        for r in stations.itertuples()
    }


@dataclass(frozen=True)
class Layout:
    """How a station record (a row a day, week or month: the step) becomes samples: which station
    is the target, the history and frame lengths in steps, the map's bounds, the split by the
    target step's year, the unit."""

    target: str
    unit: str
    bounds: tuple[float, float, float, float]
    split_years: dict[str, tuple[int, int]]
    target_name: str
    description: str
    history_days: int = HISTORY_DAYS
    frame_days: int = FRAME_DAYS
    channel_max: float = 100.0  # the physical upper bound declared for every channel (at least)
    channel_min: float = 0.0  # the physical lower bound declared for every channel


def build_station_dataset(
    daily: pd.DataFrame, stations: pd.DataFrame, layout: Layout, name: str, source: dict
) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """One sample per step t (a row of `daily`: a day, or a week or month; the rows consecutive)
    with a next step whose target reading exists: series = steps t-13..t at all stations (T=14;
    missing readings stay NaN), frames = the stations interpolated onto a 32x32 grid (IDW over the
    stations that reported) at steps t-2, t-1, t (11, 12, 13), label = the target station at t+1;
    split by the target step's year. T and F are the layout's history_days and frame_days."""
    codes = list(stations["code"])
    values = daily[codes].to_numpy(np.float32)  # [days, S]
    dates = daily["date"].to_numpy()
    n_days, n_st = values.shape
    hist = layout.history_days
    target_col = codes.index(layout.target)
    t = np.arange(hist - 1, n_days - 1)  # the last observed day of each sample
    t = t[np.isfinite(values[t + 1, target_col])]  # a day without the target's reading is no sample
    n = len(t)
    window = t[:, None] + np.arange(-hist + 1, 1)[None]  # [n, T]
    series = values[window]  # [n, T, S]
    fields = interpolate(values, idw_weights(stations, bounds=layout.bounds))  # [days, H, W]
    frame_steps = list(range(hist - layout.frame_days, hist))
    frames = fields[window[:, frame_steps]][:, :, None].astype(np.float32)  # [n, F, 1, H, W]
    target_date = pd.DatetimeIndex(dates[t + 1])
    year = target_date.year
    split = np.full(n, "", dtype=object)
    for s, (lo, hi) in layout.split_years.items():
        split[(year >= lo) & (year <= hi)] = s
    ids = [f"{d:%Y-%m-%d}" for d in target_date]
    samples = pd.DataFrame(
        {
            "sample_id": ids,
            "label": values[t + 1, target_col].astype(np.float64),
            "split": split.astype(str),
            "timestamp": target_date,
            "last_observed": pd.DatetimeIndex(dates[t]),
        }
    )
    long = pd.DataFrame(series.reshape(n * hist, n_st), columns=codes)
    long.insert(0, "step", np.tile(np.arange(hist), n))
    long.insert(0, "sample_id", np.repeat(ids, hist))
    hi = float(np.nanmax(values))
    spec = DatasetSpec(
        name=name,
        task="regression",
        target=Target(name=layout.target_name, unit=layout.unit, channel=layout.target),
        series=SeriesSpec(
            steps=hist,
            channels=[
                Channel(name=c, unit=layout.unit, min=layout.channel_min, max=max(layout.channel_max, hi))
                for c in codes
            ],
        ),
        frames=FramesSpec(
            count=layout.frame_days, channels=1, height=GRID, width=GRID, dtype="float32", steps=frame_steps
        ),
        sensors=sensor_positions(stations, layout.bounds),
        description=layout.description,
        source=source,
    )
    return spec, samples, long, frames


IRISH_WIND = Layout(
    target=TARGET_STATION,
    unit="knots",
    bounds=BOUNDS,
    split_years=SPLIT_YEARS,
    target_name=f"{TARGET_STATION} wind next day",
    description=(
        "Daily mean wind speed (knots) at 12 Irish stations, 1961-1978 (Haslett & Raftery 1989; gstat's "
        "wind.rda). Each sample: the last 14 days at every station, and the last 3 days interpolated onto a "
        "32x32 grid by inverse-distance weighting; target: next day's wind at Dublin Airport. Split by the "
        "target day's year: train 1961-1973, val 1974-1975, test 1976-1978."
    ),
)


def build_irish_wind(
    daily: pd.DataFrame, stations: pd.DataFrame, name: str = "irish-wind", source: dict | None = None
) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """irish-wind: the next day's wind at Dublin Airport (knots); split 1961-1973 / 1974-1975 / 1976-1978."""
    return build_station_dataset(daily, stations, IRISH_WIND, name, source or {"importer": "irish-wind"})


def import_irish_wind(
    out_dir: Path, cache: Path, source: Path | None = None, runner: Callable[..., Any] = subprocess.run
) -> tuple[Path, DatasetSpec]:
    """Obtain wind.rda, build the dataset, write it (atomically) to `out_dir`."""
    rda = find_rda(source, cache, runner, GSTAT)
    daily, stations = read_wind(rda)
    md5 = hashlib.md5(rda.read_bytes()).hexdigest()
    spec, samples, series, frames = build_irish_wind(
        daily,
        stations,
        name=Path(out_dir).name,
        source={"importer": "irish-wind", "file": "gstat data/wind.rda", "md5": md5, "package": GSTAT.deb},
    )
    write_dataset(out_dir, spec, samples, series, frames)
    return Path(out_dir), spec


# german-pm10: the years and stations kept, chosen from the record itself (see select_stations)
PM10_YEARS = (2002, 2009)  # before 2002 most stations had not started reporting
PM10_MAX_MISSING = 0.25  # a station is kept when it misses at most this share of those days
PM10_TARGET = "DEUB029"  # Schmücke (Thuringia): central Germany, every year 2002-2009 reported
PM10_BOUNDS = (47.0, 55.3, 5.6, 15.3)  # Germany with a margin around the stations
PM10_SPLIT_YEARS = {"train": (2002, 2007), "val": (2008, 2008), "test": (2009, 2009)}


def read_air(rda: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """spacetime's air.rda -> (daily table: date + one column per station, stations: code, name,
    lat, lon). The file holds `air` (a stations x days matrix of PM10), `dates` and `stations` (an
    S4 SpatialPoints object, which pyreadr cannot read: rdata parses it)."""
    import rdata  # lazy: only this importer reads S4 objects

    try:
        parsed = rdata.parser.parse_file(rda)
        objects, node = {}, parsed.object
        while node is not None and node.info.type.name == "LIST":  # the file's pairlist of named objects
            objects[node.tag.value.value.decode()] = node.value[0]
            node = node.value[1]
        conv = rdata.conversion.SimpleConverter()
        missing = {"air", "dates", "stations"} - set(objects)
        if missing:
            raise ImportError_(f"{rda}: expected the objects air, dates and stations; {sorted(missing)} missing")
        attrs = conv.convert(objects["air"].attributes)
        dim = [int(v) for v in np.asarray(attrs["dim"])]
        matrix = np.asarray(objects["air"].value, np.float64).reshape(dim, order="F")  # [stations, days]
        codes = [str(c) for c in attrs["dimnames"][0]]
        days = np.asarray(conv.convert(objects["dates"]), np.float64)
        coords = np.asarray(conv.convert(objects["stations"]).coords, np.float64)  # [stations, (lon, lat)]
    except ImportError_:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise ImportError_(f"{rda}: not a readable R data file ({type(exc).__name__}: {exc})") from None
    if matrix.shape != (len(codes), len(days)) or coords.shape != (len(codes), 2):
        raise ImportError_(
            f"{rda}: air is {matrix.shape}, for {len(codes)} stations and {len(days)} dates, "
            f"and stations has {coords.shape[0]} points: they do not match"
        )
    daily = pd.DataFrame(matrix.T.astype(np.float32), columns=codes)
    daily.insert(0, "date", pd.to_datetime(days, unit="D"))  # R's Date: days since 1970-01-01
    if not daily["date"].is_monotonic_increasing or daily["date"].duplicated().any():
        raise ImportError_(f"{rda}: the days are not in order or repeat")
    stations = pd.DataFrame({"code": codes, "name": codes, "lat": coords[:, 1], "lon": coords[:, 0]})
    return daily, stations


def select_stations(
    daily: pd.DataFrame,
    stations: pd.DataFrame,
    years: tuple[int, int] = PM10_YEARS,
    max_missing: float = PM10_MAX_MISSING,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The days of `years` and the stations that report on at least 1 - `max_missing` of them."""
    lo, hi = years
    kept_days = daily[(daily["date"].dt.year >= lo) & (daily["date"].dt.year <= hi)].reset_index(drop=True)
    share = kept_days[list(stations["code"])].isna().mean()
    codes = [c for c in stations["code"] if share[c] <= max_missing]
    return kept_days[["date", *codes]], stations[stations["code"].isin(codes)].reset_index(drop=True)


def german_pm10_layout(n_stations: int) -> Layout:
    lo, hi = PM10_YEARS
    return Layout(
        target=PM10_TARGET,
        unit="ug/m3",
        bounds=PM10_BOUNDS,
        split_years=PM10_SPLIT_YEARS,
        target_name=f"{PM10_TARGET} PM10 next day",
        channel_max=1000.0,
        description=(
            f"Daily mean PM10 (ug/m3) at {n_stations} rural background stations in Germany, {lo}-{hi} (AirBase, "
            "as shipped in the R package spacetime's air.rda), the stations missing at most "
            f"{PM10_MAX_MISSING:.0%} of those days; gaps kept as NaN. Each sample: the last 14 days at every station, "
            "and the last 3 days interpolated onto a 32x32 grid by inverse-distance weighting over the stations "
            f"that reported; target: next day's PM10 at {PM10_TARGET} (Schmuecke, Thuringia). Split by the target "
            "day's year: train 2002-2007, val 2008, test 2009."
        ),
    )


def import_german_pm10(
    out_dir: Path, cache: Path, source: Path | None = None, runner: Callable[..., Any] = subprocess.run
) -> tuple[Path, DatasetSpec]:
    """Obtain spacetime's air.rda, keep the years and stations (select_stations), build, write."""
    rda = find_rda(source, cache, runner, SPACETIME)
    daily, stations = select_stations(*read_air(rda))
    if PM10_TARGET not in set(stations["code"]):
        raise ImportError_(f"{rda}: the target station {PM10_TARGET} is not among the stations kept")
    md5 = hashlib.md5(rda.read_bytes()).hexdigest()
    source_info = {"importer": "german-pm10", "file": "spacetime data/air.rda", "md5": md5, "package": SPACETIME.deb}
    spec, samples, series, frames = build_station_dataset(
        daily, stations, german_pm10_layout(len(stations)), Path(out_dir).name, source_info
    )
    write_dataset(out_dir, spec, samples, series, frames)
    return Path(out_dir), spec


IMPORTERS = {"irish-wind": import_irish_wind, "german-pm10": import_german_pm10}
