"""Seasonal importers: real records with a monthly or weekly step and a strong yearly cycle, shipped
in Debian R packages, read without R and built like `importers`' daily ones (build_station_dataset).

`colorado-temperature`: monthly mean temperature (degC) at stations in and around Colorado,
1895-1997, from `data/COmonthlyMet.rda` of the R package fields (Debian: `r-cran-fields`; Nychka,
Furrer, Paige & Sain, "fields: Tools for spatial data", UCAR): CO.tmax and CO.tmin, the monthly
means of the daily maximum and minimum (years x months x stations), with the record's gaps.

`southern-germany-flu`: weekly influenza A & B cases reported to the Robert Koch Institute
(SurvStat) in the 140 districts of Bavaria and Baden-Wuerttemberg, 2001-2008, from
`data/fluBYBW.RData` of the R package surveillance (Debian: `r-cran-surveillance`; Paul & Held
2011, Stat. Med. 30:1118-1136; Meyer & Held 2014, Ann. Appl. Stat. 8:1612-1639): an S4 `sts`
object, read with rdata. Its map has label points but no coordinate reference system, so the
districts' positions come from the same package's `shapes/districtsD.RData` (Germany's districts
as at 1 January 2009, Lambert azimuthal equal-area, km), converted to lon/lat.

Each sample: the last 12 steps (months or weeks) at the 20 stations or districts a rule keeps
(series), the last 3 of them interpolated onto a 32 x 32 grid by inverse-distance weighting
(frames); target: the next step's value at one of them; split by the target's year, the earliest
70 % of the years train, the next 15 % val, the rest test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.data.contract import DatasetSpec, write_dataset
from stfn.data.importers import ImportError_, Layout, Package, build_station_dataset, find_rda

SITE = "usr/lib/R/site-library"
FIELDS = Package("r-cran-fields", f"{SITE}/fields/data/COmonthlyMet.rda", "colorado-temperature")
FLU = Package("r-cran-surveillance", f"{SITE}/surveillance/data/fluBYBW.RData", "southern-germany-flu")
DISTRICTS = Package("r-cran-surveillance", f"{SITE}/surveillance/shapes/districtsD.RData", "southern-germany-flu")
HISTORY = 12  # series T: the last 12 months or weeks
FRAMES = 3  # frames F: the last 3 of them
KEEP = 20  # the stations or districts kept (select_complete, select_busiest)
SHARES = (0.70, 0.15)  # train, val: the earliest 70 % of the target years, the next 15 %; test: the rest
MARGIN = 0.3  # degrees of the map around the kept stations
KM_PER_DEGREE = 111.2
GRS80 = (6378.137, 1 / 298.257222101)  # semi-major axis (km), flattening


def find_file(
    source: Path | None, cache: Path, runner: Callable[..., Any] = subprocess.run, package: Package = FIELDS
) -> Path:
    """`importers.find_rda`, also for a data file whose name does not end in .rda (surveillance's
    .RData): the file itself, or the first one of its name in a folder, else find_rda (a .deb, the
    cache, apt-get)."""
    if source is not None:
        path = Path(source).expanduser()
        found = sorted(path.rglob(package.file)) if path.is_dir() else [path] if path.name == package.file else []
        if found and found[0].is_file():
            return found[0]
    return find_rda(source, cache, runner, package)


def year_split(first: int, last: int, shares: tuple[float, float] = SHARES) -> dict[str, tuple[int, int]]:
    """The years first..last split in time: train the earliest `shares[0]` of them (rounded), val
    the next `shares[1]`, test the rest (each at least one year)."""
    n = last - first + 1
    if n < 3:
        raise ImportError_(f"the record's targets span {n} year(s), {first}-{last}: a split by year needs 3")
    n_train = min(max(round(n * shares[0]), 1), n - 2)
    n_val = min(max(round(n * shares[1]), 1), n - n_train - 1)
    return {
        "train": (first, first + n_train - 1),
        "val": (first + n_train, first + n_train + n_val - 1),
        "test": (first + n_train + n_val, last),
    }


def target_years(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """year_split over the years of the targets: from the step after the first full history to the last."""
    years = table["date"].dt.year
    return year_split(int(years.iloc[HISTORY]), int(years.iloc[-1]))


def spans(split: dict[str, tuple[int, int]]) -> str:
    """{"train": (1896, 1966), "val": (2007, 2007)} -> "train 1896-1966, val 2007"."""
    return ", ".join(f"{s} {lo}" if lo == hi else f"{s} {lo}-{hi}" for s, (lo, hi) in split.items())


def bounds_around(stations: pd.DataFrame, margin: float = MARGIN) -> tuple[float, float, float, float]:
    """(lat_min, lat_max, lon_min, lon_max): the stations' extent and `margin` degrees around it."""
    return (
        round(float(stations["lat"].min()) - margin, 2),
        round(float(stations["lat"].max()) + margin, 2),
        round(float(stations["lon"].min()) - margin, 2),
        round(float(stations["lon"].max()) + margin, 2),
    )


def central(stations: pd.DataFrame) -> str:
    """The code of the station nearest (km) to the stations' mean position."""
    lat, lon = stations["lat"].to_numpy(), stations["lon"].to_numpy()
    coslat = np.cos(np.deg2rad(lat.mean()))
    d = np.hypot(lat - lat.mean(), (lon - lon.mean()) * coslat) * KM_PER_DEGREE
    return str(stations["code"].iloc[int(np.argmin(d))])


def _keep(table: pd.DataFrame, stations: pd.DataFrame, codes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    kept = stations.set_index("code").loc[codes].reset_index()
    return table[["date", *codes]].reset_index(drop=True), kept


def select_complete(table: pd.DataFrame, stations: pd.DataFrame, keep: int = KEEP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `keep` stations with the fewest missing steps over the whole record (ties: the
    record's order), in the record's order."""
    missing = table[list(stations["code"])].isna().sum()
    chosen = set(sorted(stations["code"], key=lambda c: missing[c])[:keep])  # sorted() is stable
    return _keep(table, stations, [c for c in stations["code"] if c in chosen])


def select_busiest(table: pd.DataFrame, stations: pd.DataFrame, keep: int = KEEP) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `keep` districts with the most cases over the whole record (ties: the record's order),
    the busiest first."""
    total = table[list(stations["code"])].sum()
    return _keep(table, stations, sorted(stations["code"], key=lambda c: -total[c])[:keep])


# colorado-temperature


def monthly_table(tmax: np.ndarray, tmin: np.ndarray, years: np.ndarray, codes: list[str]) -> pd.DataFrame:
    """Arrays [years, 12 months, stations] of the monthly mean daily maximum and minimum -> a table:
    date (the month's first day) + one column per station of the monthly mean temperature, the
    mean of the two (missing where either is)."""
    n_years, months, n_st = tmax.shape
    if tmin.shape != tmax.shape or months != 12 or len(years) != n_years or len(codes) != n_st:
        raise ImportError_(
            f"CO.tmax {tmax.shape} and CO.tmin {tmin.shape} should be [{len(years)} years, 12, {len(codes)} stations]"
        )
    if not np.array_equal(np.asarray(years, int), np.arange(int(years[0]), int(years[0]) + n_years)):
        raise ImportError_(f"CO.years: expected consecutive years, got {list(years)[:5]}...")
    mean = ((tmax + tmin) / 2).reshape(n_years * 12, n_st).astype(np.float32)  # year-major: Jan..Dec each year
    table = pd.DataFrame(mean, columns=codes)
    table.insert(0, "date", pd.date_range(f"{int(years[0])}-01-01", periods=n_years * 12, freq="MS"))
    return table


def read_colorado(rda: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """fields' COmonthlyMet.rda -> (monthly table: date + one column per station, stations: code,
    name, lat, lon, elev)."""
    import pyreadr  # lazy: only the importers read R data files

    try:
        objects = pyreadr.read_r(str(rda))
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise ImportError_(f"{rda}: not a readable R data file ({type(exc).__name__}: {exc})") from None
    needed = ["CO.tmax", "CO.tmin", "CO.years", "CO.id", "CO.names", "CO.loc", "CO.elev"]
    missing = [k for k in needed if k not in objects]
    if missing:
        raise ImportError_(f"{rda}: expected the objects {needed}; {missing} missing")
    try:
        stations = pd.DataFrame(
            {
                "code": objects["CO.id"].iloc[:, 0].astype(str).str.strip(),
                "name": objects["CO.names"].iloc[:, 0].astype(str).str.strip(),
                "lat": objects["CO.loc"]["lat"].to_numpy(float),
                "lon": objects["CO.loc"]["lon"].to_numpy(float),
                "elev": objects["CO.elev"].iloc[:, 0].to_numpy(float),
            }
        )
        years = objects["CO.years"].iloc[:, 0].to_numpy()
        tmax, tmin = np.asarray(objects["CO.tmax"], np.float64), np.asarray(objects["CO.tmin"], np.float64)
    except (AttributeError, KeyError, IndexError, ValueError) as exc:
        raise ImportError_(f"{rda}: CO.id, CO.names, CO.loc (lon, lat), CO.elev, CO.years: {exc!r}") from None
    return monthly_table(tmax, tmin, years, list(stations["code"])), stations


def colorado_layout(table: pd.DataFrame, stations: pd.DataFrame, target: str) -> Layout:
    split = target_years(table)
    name = stations.set_index("code").loc[target, "name"]
    first, last = table["date"].dt.year.iloc[[0, -1]]
    return Layout(
        target=target,
        unit="degC",
        bounds=bounds_around(stations),
        split_years=split,
        target_name=f"{name} mean temperature next month",
        history_days=HISTORY,
        frame_days=FRAMES,
        channel_min=-60.0,
        channel_max=50.0,
        description=(
            f"Monthly mean temperature (degC: the mean of the monthly means of the daily maximum and minimum, CO.tmax "
            f"and CO.tmin) at the {len(stations)} stations in and around Colorado with the fewest missing months over "
            f"{first}-{last}; gaps kept as NaN. Source: data/COmonthlyMet.rda of the R package fields (Debian: "
            "r-cran-fields; Nychka, Furrer, Paige & Sain, fields: Tools for spatial data, UCAR), a subset of the US "
            "monthly meteorological record. Each sample: the last 12 months at every station, and the last 3 months "
            "interpolated onto a 32x32 grid by inverse-distance weighting over the stations that reported; target: "
            f"next month's mean temperature at {name} ({target}), the kept station nearest their centre. Split by "
            f"the target month's year: {spans(split)}."
        ),
    )


def import_colorado_temperature(
    out_dir: Path, cache: Path, source: Path | None = None, runner: Callable[..., Any] = subprocess.run
) -> tuple[Path, DatasetSpec]:
    """Obtain fields' COmonthlyMet.rda, keep the most complete stations (select_complete), the
    central one the target, build, write."""
    rda = find_file(source, cache, runner, FIELDS)
    table, stations = select_complete(*read_colorado(rda))
    md5 = hashlib.md5(rda.read_bytes()).hexdigest()
    source_info = {
        "importer": FIELDS.recording,
        "file": "fields data/COmonthlyMet.rda",
        "md5": md5,
        "package": FIELDS.deb,
    }
    layout = colorado_layout(table, stations, central(stations))
    spec, samples, series, frames = build_station_dataset(table, stations, layout, Path(out_dir).name, source_info)
    write_dataset(out_dir, spec, samples, series, frames)
    return Path(out_dir), spec


# southern-germany-flu


def _r_objects(path: Path) -> dict[str, Any]:
    """The named objects of an R data file, converted by rdata (S4 objects as namespaces)."""
    import rdata  # lazy: only the importers read R data files

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Missing constructor for R class ...": the raw object is what we read
            return dict(rdata.conversion.SimpleConverter().convert(rdata.parser.parse_file(path)))
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise ImportError_(f"{path}: not a readable R data file ({type(exc).__name__}: {exc})") from None


def week_dates(start_year: int, start_week: int, n: int, per_year: int = 52) -> pd.DatetimeIndex:
    """The Thursdays of the ISO weeks an `sts` object numbers (year, week), `per_year` weeks a year
    from (start_year, start_week): a week's Thursday lies in the week's own year (ISO 8601), so a
    split by the timestamp's year is a split by the week's year. With 52 a year, a 53rd ISO week
    (2004's) has no row: its neighbours are 14 days apart."""
    index = start_week - 1 + np.arange(n)
    return pd.DatetimeIndex(
        [dt.date.fromisocalendar(start_year + int(i) // per_year, int(i) % per_year + 1, 4) for i in index]
    )


def laea_to_lonlat(
    x: np.ndarray,
    y: np.ndarray,
    lat_0: float,
    lon_0: float,
    x_0: float,
    y_0: float,
    ellipsoid: tuple[float, float] = GRS80,
) -> tuple[np.ndarray, np.ndarray]:
    """Lambert azimuthal equal-area (oblique, on an ellipsoid; km) -> (lon, lat) in degrees: the
    inverse of EPSG method 9820 (EPSG Guidance Note 7-2), the authalic latitude by its series."""
    a, f = ellipsoid
    e2 = f * (2 - f)
    e = np.sqrt(e2)

    def q(phi: np.ndarray | float) -> np.ndarray:
        s = np.sin(phi)
        return (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))

    qp = q(np.pi / 2)
    rq = a * np.sqrt(qp / 2)
    phi0 = np.deg2rad(lat_0)
    beta0 = np.arcsin(q(phi0) / qp)
    d = a * np.cos(phi0) / np.sqrt(1 - e2 * np.sin(phi0) ** 2) / (rq * np.cos(beta0))
    dx, dy = np.asarray(x, np.float64) - x_0, np.asarray(y, np.float64) - y_0
    rho = np.maximum(np.hypot(dx / d, d * dy), 1e-12)
    c = 2 * np.arcsin(rho / (2 * rq))
    beta = np.arcsin(np.cos(c) * np.sin(beta0) + d * dy * np.sin(c) * np.cos(beta0) / rho)
    lon = np.deg2rad(lon_0) + np.arctan2(
        dx * np.sin(c), d * rho * np.cos(beta0) * np.cos(c) - d * d * dy * np.sin(beta0) * np.sin(c)
    )
    lat = (
        beta
        + (e2 / 3 + 31 * e2**2 / 180 + 517 * e2**3 / 5040) * np.sin(2 * beta)
        + (23 * e2**2 / 360 + 251 * e2**3 / 3780) * np.sin(4 * beta)
        + (761 * e2**3 / 45360) * np.sin(6 * beta)
    )
    return np.rad2deg(lon), np.rad2deg(lat)


def _laea(proj4: str, path: Path) -> dict[str, float]:
    """The parameters of a `+proj=laea ... +ellps=GRS80 +units=km` string, in km."""
    args = dict(re.findall(r"\+(\w+)=(\S+)", proj4))
    if args.get("proj") != "laea" or args.get("ellps") != "GRS80" or args.get("units") != "km":
        raise ImportError_(f"{path}: expected districts in a GRS80 laea projection in km, got {proj4!r}")
    return {k: float(args.get(k, 0)) / (1000 if k in ("x_0", "y_0") else 1) for k in ("lat_0", "lon_0", "x_0", "y_0")}


def district_positions(shapes: Path) -> pd.DataFrame:
    """surveillance's districtsD.RData -> key (5 digits), name, lat, lon: each district's label point."""
    objects = _r_objects(shapes)
    districts = objects.get("districtsD")
    try:
        params = _laea(str(np.asarray(districts.proj4string.projargs).ravel()[0]), shapes)
        keys = [str(np.asarray(p.ID).ravel()[0]) for p in districts.polygons]
        xy = np.array([np.asarray(p.labpt, np.float64).ravel() for p in districts.polygons])
        names = districts.data.set_index("KEY").loc[keys, "GEN"].astype(str).to_numpy()
    except (AttributeError, KeyError, IndexError, ValueError) as exc:
        raise ImportError_(
            f"{shapes}: expected the SpatialPolygonsDataFrame districtsD ({type(exc).__name__}: {exc})"
        ) from None
    lon, lat = laea_to_lonlat(xy[:, 0], xy[:, 1], **params)
    return pd.DataFrame({"key": keys, "name": names, "lat": lat, "lon": lon})


def read_flu(rda: Path, shapes: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """surveillance's fluBYBW.RData (+ districtsD.RData for the positions) -> (weekly table: date +
    one column per district, districts: code, name, lat, lon)."""
    sts = _r_objects(rda).get("fluBYBW")
    try:
        observed = sts.observed
        counts = np.asarray(observed, np.float64)  # [weeks, districts]
        codes = [str(c) for c in np.asarray(observed.coords[observed.dims[1]])]
        start = [int(v) for v in np.asarray(sts.start)]
        freq = int(np.asarray(sts.freq).ravel()[0])
        as_date = bool(np.asarray(sts.epochAsDate).ravel()[0])
        names = sts.map.data.set_axis(sts.map.data["id"].astype(str)).loc[codes, "name"].astype(str).to_numpy()
    except (AttributeError, KeyError, IndexError, ValueError) as exc:
        raise ImportError_(f"{rda}: expected the sts object fluBYBW ({type(exc).__name__}: {exc})") from None
    if freq != 52 or as_date or counts.shape[1] != len(codes):
        raise ImportError_(f"{rda}: expected weekly counts (freq 52, week numbers), got freq {freq}")
    weekly = pd.DataFrame(counts.astype(np.float32), columns=codes)
    weekly.insert(0, "date", week_dates(start[0], start[1], len(counts), freq))
    where = district_positions(shapes).set_index("key")
    keys = [c.zfill(5) for c in codes]  # fluBYBW's 8336 is the official key 08336
    unknown = sorted(set(keys) - set(where.index))
    if unknown:
        raise ImportError_(f"{shapes}: no position for the districts {unknown}")
    districts = pd.DataFrame(
        {
            "code": codes,
            "name": names,
            "lat": where.loc[keys, "lat"].to_numpy(),
            "lon": where.loc[keys, "lon"].to_numpy(),
        }
    )
    return weekly, districts


def flu_layout(table: pd.DataFrame, districts: pd.DataFrame, target: str) -> Layout:
    split = target_years(table)
    name = districts.set_index("code").loc[target, "name"]
    return Layout(
        target=target,
        unit="cases",
        bounds=bounds_around(districts),
        split_years=split,
        target_name=f"{name} influenza cases next week",
        history_days=HISTORY,
        frame_days=FRAMES,
        channel_min=0.0,
        channel_max=10_000.0,
        description=(
            f"Weekly influenza A & B cases reported to the Robert Koch Institute (SurvStat, queried 6 March 2009) in "
            f"the {len(districts)} of the 140 districts of Bavaria and Baden-Wuerttemberg with the most cases over "
            "2001-2008. Source: data/fluBYBW.RData of the R package surveillance (Debian: r-cran-surveillance; Paul & "
            "Held 2011, Stat. Med. 30:1118-1136; Meyer & Held 2014, Ann. Appl. Stat. 8:1612-1639). Weeks as the "
            "package numbers them, 52 a year from week 1 of 2001 (timestamps: the Thursdays of those ISO weeks; "
            "2004's week 53 has no row). Positions: the label points of the package's shapes/districtsD.RData "
            "(districts as at 1 January 2009, Lambert azimuthal equal-area), as lon/lat. Each sample: the last 12 "
            "weeks at every district, and the last 3 weeks interpolated onto a 32x32 grid by inverse-distance "
            f"weighting; target: next week's cases in {name} ({target}), the district with the most cases. Split by "
            f"the target week's year: {spans(split)}."
        ),
    )


def import_southern_germany_flu(
    out_dir: Path, cache: Path, source: Path | None = None, runner: Callable[..., Any] = subprocess.run
) -> tuple[Path, DatasetSpec]:
    """Obtain surveillance's fluBYBW.RData and districtsD.RData, keep the busiest districts
    (select_busiest), the busiest one the target, build, write."""
    rda = find_file(source, cache, runner, FLU)
    if source is not None and Path(source).is_file():  # the data file or the .deb: the package's shapes/ beside data/
        shapes = rda.parent.parent / "shapes" / DISTRICTS.file
        if not shapes.is_file():
            raise ImportError_(
                f"{shapes}: not found beside {rda} (the district positions); give the {FLU.deb} .deb or its "
                "unpacked folder as --source"
            )
    else:
        shapes = find_file(source, cache, runner, DISTRICTS)
    table, districts = select_busiest(*read_flu(rda, shapes))
    source_info = {
        "importer": FLU.recording,
        "file": "surveillance data/fluBYBW.RData",
        "md5": hashlib.md5(rda.read_bytes()).hexdigest(),
        "package": FLU.deb,
        "positions": "surveillance shapes/districtsD.RData",
        "positions_md5": hashlib.md5(shapes.read_bytes()).hexdigest(),
    }
    layout = flu_layout(table, districts, str(districts["code"].iloc[0]))
    spec, samples, series, frames = build_station_dataset(table, districts, layout, Path(out_dir).name, source_info)
    write_dataset(out_dir, spec, samples, series, frames)
    return Path(out_dir), spec


IMPORTERS = {FIELDS.recording: import_colorado_temperature, FLU.recording: import_southern_germany_flu}
