"""What the integration tests of the real recordings share (test_german_pm10.py, test_irish_wind.py's
neighbours, test_colorado_temperature.py, test_southern_germany_flu.py): the real file imported like
`stfn import` does, fetched with `apt-get download` into the cache `stfn import` uses
(.stfn/cache/<name>, git-ignored); where apt-get is missing and nothing is cached, the test fails
under CI=true and is skipped elsewhere (`need`), saying what to install."""

import shutil
from pathlib import Path

import pandas as pd

from stfn.data import importers, seasonal

REPO = Path(__file__).resolve().parents[2]
IMPORTERS = importers.IMPORTERS | seasonal.IMPORTERS
CACHES = {name: REPO / ".stfn" / "cache" / name for name in IMPORTERS}
PACKAGES = {p.recording: p for p in (importers.GSTAT, importers.SPACETIME, seasonal.FIELDS, seasonal.FLU)}


def imported(tmp_path_factory, need, name: str) -> Path:
    package = PACKAGES[name]
    if shutil.which("apt-get") is None and not (CACHES[name] / "unpacked" / package.rda).is_file():
        need(
            f"apt-get not available and no cached {package.deb}: cannot fetch {package.file}",
            f"needs apt-get (Debian/Ubuntu) to fetch {package.deb} (`apt-get download {package.deb}`),"
            f" or its unpacked package under {CACHES[name] / 'unpacked'}",
        )
    root = tmp_path_factory.mktemp(name)
    folder, _ = IMPORTERS[name](root / "data" / "raw" / name, CACHES[name])
    return folder


def validates(folder: Path, tmp_path: Path) -> bool:
    """The dataset passes validation with the project's default max_missing_ratio."""
    from stfn.config import DataParams
    from stfn.validation import validate_dataset

    return validate_dataset(folder, DataParams().max_missing_ratio, tmp_path / "report.json").success


def years_in_order(samples: pd.DataFrame) -> bool:
    years = samples.groupby("split")["timestamp"].agg(["min", "max"])
    return years.loc["train", "max"] < years.loc["val", "min"] and years.loc["val", "max"] < years.loc["test", "min"]
