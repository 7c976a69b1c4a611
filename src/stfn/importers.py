"""Importers: real recordings that ship inside a package, written as datasets in the contract.

`irish-wind`: daily mean wind speed (knots) at 12 Irish synoptic stations, 1961-1978
(Haslett & Raftery 1989, "Space-time modelling with long-memory dependence: assessing Ireland's
wind power resource"), shipped as `data/wind.rda` in the R package gstat, which Debian packages
as `r-cran-gstat`. We read it without R (`pyreadr`), from a path the user gives or from the
Debian package fetched with `apt-get download` and unpacked with `dpkg-deb -x`.
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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.data import Channel, DatasetSpec, FramesSpec, SeriesSpec, Target, write_dataset

log = logging.getLogger(__name__)

DEB_PACKAGE = "r-cran-gstat"
RDA_IN_DEB = "usr/lib/R/site-library/gstat/data/wind.rda"
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


def find_rda(source: Path | None, cache: Path, runner: Callable[..., Any] = subprocess.run) -> Path:
    """The path of `wind.rda`: from `source` (the .rda itself, a .deb, or a folder holding
    either, e.g. an unpacked package), else from the cache, else fetched with apt-get."""
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise ImportError_(f"{source}: no such file or folder (give wind.rda, a {DEB_PACKAGE} .deb, or a folder)")
        if source.is_file() and source.suffix == ".rda":
            return source
        if source.is_file() and source.suffix == ".deb":
            return _unpack_deb(source, cache, runner)
        if source.is_dir():
            found = sorted(source.rglob("wind.rda")) or sorted(source.rglob(f"{DEB_PACKAGE}_*.deb"))
            if found:
                return find_rda(found[0], cache, runner)
        raise ImportError_(f"{source}: holds no wind.rda and no {DEB_PACKAGE}_*.deb")
    cached = cache / "unpacked" / RDA_IN_DEB
    if cached.is_file():
        return cached
    return _unpack_deb(_apt_download(cache, runner), cache, runner)


def _apt_download(cache: Path, runner: Callable[..., Any]) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ImportError_(
            f"apt-get/dpkg-deb not found: this is not a Debian/Ubuntu system. Download the Debian package "
            f"{DEB_PACKAGE} (https://packages.debian.org/{DEB_PACKAGE}) or gstat's data/wind.rda from CRAN on "
            f"another machine and run: stfn import irish-wind --source PATH"
        )
    cache.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s with apt-get download into %s", DEB_PACKAGE, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = runner(["apt-get", "download", DEB_PACKAGE], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # a fresh system may have no package lists yet: update them once (root only) and retry
            log.info("apt-get download failed; running apt-get update and trying again")
            runner(["apt-get", "update", "-q"], capture_output=True, text=True)
            proc = runner(["apt-get", "download", DEB_PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{DEB_PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no .deb written"]
            raise ImportError_(
                f"`apt-get download {DEB_PACKAGE}` failed ({detail[0]}); try `sudo apt-get update` first, or, "
                f"without network access, give the file: stfn import irish-wind --source PATH"
            )
        final = cache / debs[0].name
        debs[0].replace(final)
    return final


def _unpack_deb(deb: Path, cache: Path, runner: Callable[..., Any]) -> Path:
    if shutil.which("dpkg-deb") is None:
        raise ImportError_(f"{deb}: dpkg-deb not found to unpack it; give the wind.rda file itself with --source")
    out = cache / "unpacked"
    out.mkdir(parents=True, exist_ok=True)
    proc = runner(["dpkg-deb", "-x", str(deb), str(out)], capture_output=True, text=True)
    rda = out / RDA_IN_DEB
    if proc.returncode != 0 or not rda.is_file():
        raise ImportError_(f"{deb}: `dpkg-deb -x` did not give {RDA_IN_DEB} ({(proc.stderr or '').strip()})")
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


def idw_weights(stations: pd.DataFrame, grid: int = GRID, power: float = IDW_POWER) -> np.ndarray:
    """Inverse-distance weights [grid*grid, S] (rows sum to 1) from each grid cell's centre to the
    stations, distances in km on a local equirectangular projection."""
    lat_min, lat_max, lon_min, lon_max = BOUNDS
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


def sensor_positions(stations: pd.DataFrame) -> dict[str, tuple[float, float]]:
    lat_min, lat_max, lon_min, lon_max = BOUNDS
    return {
        r.code: (
            round(float((lat_max - r.lat) / (lat_max - lat_min)), 4),
            round(float((r.lon - lon_min) / (lon_max - lon_min)), 4),
        )
        for r in stations.itertuples()
    }


def build_irish_wind(
    daily: pd.DataFrame, stations: pd.DataFrame, name: str = "irish-wind", source: dict | None = None
) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """One sample per day t with a next day: series = days t-13..t at all stations (T=14), frames
    = the stations interpolated onto a 32x32 grid (IDW) on days t-2, t-1, t (steps 11, 12, 13),
    label = the wind at Dublin Airport on day t+1 (knots); split by the target day's year."""
    codes = list(stations["code"])
    values = daily[codes].to_numpy(np.float32)  # [days, S]
    dates = daily["date"].to_numpy()
    n_days, n_st = values.shape
    t = np.arange(HISTORY_DAYS - 1, n_days - 1)  # the last observed day of each sample
    n = len(t)
    window = t[:, None] + np.arange(-HISTORY_DAYS + 1, 1)[None]  # [n, T]
    series = values[window]  # [n, T, S]
    fields = (np.nan_to_num(values) @ idw_weights(stations).T).reshape(n_days, GRID, GRID)  # [days, H, W]
    frame_steps = list(range(HISTORY_DAYS - FRAME_DAYS, HISTORY_DAYS))
    frames = fields[window[:, frame_steps]][:, :, None].astype(np.float32)  # [n, F, 1, H, W]
    target_col = codes.index(TARGET_STATION)
    target_date = pd.DatetimeIndex(dates[t + 1])
    year = target_date.year
    split = np.full(n, "", dtype=object)
    for s, (lo, hi) in SPLIT_YEARS.items():
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
    long = pd.DataFrame(series.reshape(n * HISTORY_DAYS, n_st), columns=codes)
    long.insert(0, "step", np.tile(np.arange(HISTORY_DAYS), n))
    long.insert(0, "sample_id", np.repeat(ids, HISTORY_DAYS))
    hi = float(np.nanmax(values))
    spec = DatasetSpec(
        name=name,
        task="regression",
        target=Target(name=f"{TARGET_STATION} wind next day", unit="knots", channel=TARGET_STATION),
        series=SeriesSpec(
            steps=HISTORY_DAYS,
            channels=[Channel(name=c, unit="knots", min=0.0, max=max(100.0, hi)) for c in codes],
        ),
        frames=FramesSpec(count=FRAME_DAYS, channels=1, height=GRID, width=GRID, dtype="float32", steps=frame_steps),
        sensors=sensor_positions(stations),
        description=(
            "Daily mean wind speed (knots) at 12 Irish stations, 1961-1978 (Haslett & Raftery 1989; gstat's "
            "wind.rda). Each sample: the last 14 days at every station, and the last 3 days interpolated onto a "
            "32x32 grid by inverse-distance weighting; target: next day's wind at Dublin Airport. Split by the "
            "target day's year: train 1961-1973, val 1974-1975, test 1976-1978."
        ),
        source=source or {"importer": "irish-wind"},
    )
    return spec, samples, long, frames


def import_irish_wind(
    out_dir: Path, cache: Path, source: Path | None = None, runner: Callable[..., Any] = subprocess.run
) -> tuple[Path, DatasetSpec]:
    """Obtain wind.rda, build the dataset, write it (atomically) to `out_dir`."""
    rda = find_rda(source, cache, runner)
    daily, stations = read_wind(rda)
    md5 = hashlib.md5(rda.read_bytes()).hexdigest()
    spec, samples, series, frames = build_irish_wind(
        daily,
        stations,
        name=Path(out_dir).name,
        source={"importer": "irish-wind", "file": "gstat data/wind.rda", "md5": md5, "package": DEB_PACKAGE},
    )
    write_dataset(out_dir, spec, samples, series, frames)
    return Path(out_dir), spec


IMPORTERS = {"irish-wind": import_irish_wind}
