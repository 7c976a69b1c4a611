"""A seasonal station record: a regression generator for the tests whose target follows the
calendar, unlike moving-digits.

Three sensors read daily for `years` years; the target's own sensor `a` is a yearly cycle plus a
weekly one plus slow AR(1) weather, the other two are noise. Each sample: the last 8 days of the
three sensors (2 % of readings missing), one 8x8 frame of the last day's readings smeared over a
grid, the `timestamp` of the next day and, as label, `a` on that day. Split by the target's year:
the last year is test, the one before val. Deterministic from the seed; written in the dataset
contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stfn.data.contract import Channel, DatasetSpec, FramesSpec, SeriesSpec, Target, write_dataset

STEPS, GRID = 8, 8


def make_seasonal(years: int = 5, seed: int = 0, name: str = "seasonal"):
    rng = np.random.default_rng(seed)
    days = pd.date_range("2001-01-01", periods=int(365.25 * years), freq="D")
    doy, dow = days.dayofyear.to_numpy() - 1, days.dayofweek.to_numpy()
    weather = np.zeros(len(days))
    for i in range(1, len(days)):
        weather[i] = 0.8 * weather[i - 1] + rng.normal(0, 1.0)
    a = 10 + 6 * np.sin(2 * np.pi * doy / 365.25) + 1.5 * (dow >= 5) + weather
    raw = np.stack([a, rng.normal(5, 1, len(days)), rng.normal(0, 2, len(days))], axis=1)
    t = np.arange(STEPS - 1, len(days) - 1)  # last observed day of each sample
    series = raw[t[:, None] + np.arange(-STEPS + 1, 1)]  # (N, T, 3)
    series[rng.random(series.shape) < 0.02] = np.nan
    n = len(t)
    grid = np.linspace(0, 1, GRID)
    frames = raw[t, 0][:, None, None] * grid[None, :, None] + raw[t, 1][:, None, None] * grid[None, None, :]
    frames = frames[:, None, None].astype(np.float32)  # (N, 1, 1, H, W)
    when = days[t + 1]
    year = when.year.to_numpy()
    split = np.where(year == year.max(), "test", np.where(year == year.max() - 1, "val", "train"))
    ids = [f"d{d:%Y%m%d}" for d in when]
    samples = pd.DataFrame({"sample_id": ids, "label": a[t + 1], "split": split, "timestamp": when})
    long = pd.DataFrame(series.reshape(n * STEPS, 3).astype(np.float32), columns=["a", "b", "c"])
    long.insert(0, "step", np.tile(np.arange(STEPS), n))
    long.insert(0, "sample_id", np.repeat(ids, STEPS))
    spec = DatasetSpec(
        name=name,
        task="regression",
        target=Target(name="a next day", unit="u", channel="a"),
        series=SeriesSpec(steps=STEPS, channels=[Channel(name=c, unit="u") for c in "abc"]),
        frames=FramesSpec(count=1, channels=1, height=GRID, width=GRID, dtype="float32", steps=[STEPS - 1]),
        description="seasonal test record",
        source={"generator": "tests/seasonal.py", "years": years, "seed": seed},
    )
    return spec, samples, long, frames


def write_seasonal(folder: Path, years: int = 5, seed: int = 0) -> Path:
    return write_dataset(folder, *make_seasonal(years, seed, name=Path(folder).name))
