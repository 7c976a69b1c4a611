"""The calendar of a sample's timestamp (coordinates, the periods chosen from the record) and the
simple forecast a regression starts from (chosen on validation, reproduced by the built model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stfn import base_forecast, baselines, defaults
from stfn.config import ModelParams
from stfn.covariates import CalendarFeatures, last_finite
from stfn.data.contract import Channel, DatasetSpec, FramesSpec, SeriesSpec, Target
from stfn.features import FeatureSet
from stfn.models import STFNConfig, build_model
from stfn.training import model_config
from stfn.transforms import calendar_coords


def test_calendar_coordinates_of_datetimes_and_iso_strings():
    got = calendar_coords(["2024-01-01T06:30:00", "2024-12-31T23:00:00+01:00", "2023-03-05"])
    np.testing.assert_allclose(got[0], [6.5, 6.5 / 24, 6.5 / 24], rtol=1e-6)  # a Monday, 1 January
    np.testing.assert_allclose(got[1], [23.0, 1 + 23 / 24, 365 + 23 / 24], rtol=1e-6)  # wall-clock time kept
    np.testing.assert_allclose(got[2], [0.0, 6.0, 63.0])  # a Sunday, day 64 of the year
    same = calendar_coords(pd.to_datetime(["2024-01-01T06:30:00"]).to_numpy())
    np.testing.assert_array_equal(same[0], got[0])
    for bad in (["yesterday"], [None], ["2024-13-01"]):
        with pytest.raises(ValueError):
            calendar_coords(bad)


@pytest.mark.parametrize(
    ("freq", "periods", "chosen"),
    [
        ("MS", 400, ["day_of_year"]),  # monthly for 33 years
        ("W", 400, ["day_of_year"]),  # weekly
        ("D", 2000, ["day_of_week", "day_of_year"]),
        ("D", 300, ["day_of_week"]),  # less than two years: no yearly cycle
        ("h", 20000, ["hour_of_day", "day_of_week", "day_of_year"]),
    ],
)
def test_the_calendar_periods_follow_the_records_spacing_and_span(freq, periods, chosen):
    got, why = defaults.calendar_for(pd.date_range("2000-01-01", periods=periods, freq=freq).to_numpy())
    assert got == chosen and "median" in why


def test_no_timestamps_no_calendar():
    assert defaults.calendar_for(None) == ([], "the samples have no timestamp column")


def test_calendar_features_are_periodic():
    enc = CalendarFeatures(["day_of_year", "hour_of_day"])
    a = enc(torch.tensor([[3.0, 0.0, 10.0]]))
    b = enc(torch.tensor([[27.0, 0.0, 10.0 + 365.25]]))  # a period later in both
    assert a.shape == (1, enc.size) == (1, 8)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown period"):
        CalendarFeatures(["month"])


def test_last_finite_reading():
    x = torch.tensor([[1.0, 2.0, float("nan")], [float("nan")] * 3, [4.0, float("nan"), 5.0]])
    torch.testing.assert_close(last_finite(x), torch.tensor([2.0, 0.0, 5.0]))


def seasonal_features(n_years: int = 12, seed: int = 0, noise: float = 0.3) -> tuple[FeatureSet, np.ndarray]:
    """A weekly record of 3 channels whose target follows the day of the year (plus AR noise on
    channel `a`, the target's own); the last two years are val and test. Features as featurize
    writes them (global norm), with the raw labels returned too."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2000-01-02", periods=52 * n_years, freq="W")
    doy = dates.dayofyear.to_numpy() - 1
    season = 10 + 5 * np.sin(2 * np.pi * doy / 365.25)
    level = season + np.cumsum(rng.normal(0, noise, len(dates))) * 0.2
    raw = np.stack([level, rng.normal(size=len(dates)), rng.normal(size=len(dates))], axis=1)
    t = 8
    idx = np.arange(t - 1, len(dates) - 1)
    series = raw[idx[:, None] + np.arange(-t + 1, 1)].astype(np.float32)  # (N, T, 3)
    series[rng.random(series.shape) < 0.05] = np.nan
    labels = level[idx + 1]
    stamps = dates[idx + 1]
    year = stamps.year
    split = np.where(year >= 2000 + n_years - 1, "test", np.where(year >= 2000 + n_years - 2, "val", "train"))
    train = split == "train"
    mean = np.nanmean(series[train], axis=(0, 1))
    scale = np.nanstd(series[train] - mean, axis=(0, 1))
    tm, ts = labels[train].mean(), labels[train].std()
    spec = DatasetSpec(
        name="seasonal",
        task="regression",
        target=Target(name="a next week", unit="u", channel="a"),
        series=SeriesSpec(steps=t, channels=[Channel(name=c, unit="u") for c in "abc"]),
        frames=FramesSpec(count=1, channels=1, height=8, width=8, dtype="float32", steps=[t - 1]),
    )
    n = len(idx)
    stats = {"series_norm": "global", "series_mean": mean.tolist(), "series_scale": scale.tolist()}
    stats |= {"target_mean": float(tm), "target_std": float(ts)}
    index = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split, "row": np.arange(n)})
    index["timestamp"] = stamps.to_numpy()
    fs = FeatureSet(
        None,
        spec,
        ((series - mean) / scale).astype(np.float32),
        np.zeros((n, 1, 1, 8, 8), np.float32),
        ((labels - tm) / ts).astype(np.float32),
        index,
        {"stats": stats, "timestamp": True},
        calendar=calendar_coords(stamps.to_numpy()),
    )
    return fs, labels


def test_the_start_is_the_best_simple_forecast_on_val_and_the_model_reproduces_it():
    fs, labels = seasonal_features()
    train, val = fs.rows("train"), fs.rows("val")
    base = base_forecast.choose(fs, train, val)
    assert set(base.scores) == {"ridge", "climatology", "persistence", "combination"}
    assert base.val_mae == min(base.scores.values())
    assert base.scores["climatology"] < base.scores["ridge"]  # the seasonal cycle: ridge cannot see the date
    # the climatology candidate is the climatology baseline's forecast (reference: baselines.climatology)
    split = fs.index["split"].to_numpy()
    ref = baselines.climatology(fs.index["timestamp"], labels, split == "train")
    assert base.scores["climatology"] == pytest.approx(np.abs(ref[val] - labels[val]).mean(), rel=1e-6)
    cfg = model_config(fs, ModelParams(dim=8, attention_hidden=8, linear_skip=True), base)
    assert cfg.calendar == ["day_of_year"] and cfg.takes_time  # weekly over 12 years
    model = build_model(cfg, seed=0).eval()
    base_forecast.apply(model, base)
    rows = fs.rows("test")
    with torch.no_grad():
        args = (torch.as_tensor(fs.series[rows]), torch.as_tensor(fs.frames[rows]))
        out = model(*args, torch.as_tensor(fs.calendar[rows]))["output"][:, 0].numpy()
        with pytest.raises(ValueError, match="calendar coordinates"):
            model(*args)
    st = fs.stats
    pred = out * st["target_std"] + st["target_mean"]
    # the chosen candidate's own test forecast, computed without the model
    named = {c.name: c for c in base_forecast.candidates(fs, train, val)}
    assert named[base.name].val_mae == base.val_mae
    window = np.nan_to_num(np.asarray(fs.series[rows], np.float64)).reshape(len(rows), -1)
    cols = []
    for term in base.terms:
        if term == "climatology":
            cols.append(base.climatology[np.floor(fs.calendar[rows, 2]).astype(int)])
        else:
            cols.append(base_forecast._last_finite(np.asarray(fs.series[rows, :, 0], np.float64)))
    expect = window @ base.window + base.bias + (np.stack(cols, 1) @ base.term_weights if cols else 0)
    np.testing.assert_allclose(pred, expect * st["target_std"] + st["target_mean"], rtol=1e-4, atol=1e-3)


def test_persistence_is_the_last_observed_reading_in_the_targets_unit():
    fs, labels = seasonal_features(noise=3.0)
    found = {c.name: c for c in base_forecast.candidates(fs, fs.rows("train"), fs.rows("val"))}
    p = found["persistence"]
    raw = fs.series[:, :, 0] * fs.stats["series_scale"][0] + fs.stats["series_mean"][0]
    ref = baselines.persistence(raw[:, :, None], 0)  # the persistence baseline on the raw readings
    val = fs.rows("val")
    ok = np.isfinite(ref[val])
    assert ok.all()
    assert p.val_mae == pytest.approx(np.abs(ref[val] - labels[val]).mean(), rel=1e-4)


def test_a_checkpoint_from_before_the_calendar_builds_the_same_model():
    old = {
        "series_channels": 2, "frame_channels": 1, "frame_size": [8, 8], "frame_steps": [3], "steps": 4,
        "n_outputs": 1, "task": "regression", "linear_skip": True, "dim": 8, "attention_hidden": 8,
    }  # fmt: skip
    cfg = STFNConfig.from_dict(old)
    assert cfg.calendar == [] and cfg.base_terms == [] and not cfg.takes_time
    model = build_model(cfg, 0)
    assert model.calendar is None and model.terms is None
