"""The regression baselines computed beside every regression evaluation."""

import numpy as np
import pandas as pd

from stfn.baselines import climatology, persistence, ridge


def test_persistence_takes_the_last_observed_reading_of_the_target_channel():
    s = np.array(
        [
            [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]],
            [[1.0, 10.0], [2.0, 20.0], [np.nan, 30.0]],  # last reading missing: the one before
            [[np.nan, 1.0], [np.nan, 2.0], [np.nan, 3.0]],  # never observed: NaN, not 0
        ]
    )
    out = persistence(s, 0)
    assert out[0] == 3.0 and out[1] == 2.0 and np.isnan(out[2])
    assert list(persistence(s, 1)) == [30.0, 30.0, 3.0]


def test_climatology_recovers_a_seasonal_cycle_from_training_years_only():
    days = pd.date_range("1990-01-01", "1999-12-31", freq="D")
    doy = days.dayofyear.to_numpy()
    seasonal = 10 + 5 * np.cos(2 * np.pi * doy / 365.25)
    rng = np.random.default_rng(0)
    y = seasonal + rng.normal(0, 1, len(days))
    train = days.year < 1998
    y[~train] += 100  # test years are shifted: climatology must not see them
    pred = climatology(pd.Series(days), y, train)
    err = np.abs(pred[~train] - seasonal[~train])
    assert err.mean() < 0.5  # ~ the seasonal curve, not the shifted test values


def test_ridge_recovers_a_linear_relation_and_picks_its_penalty_on_val():
    rng = np.random.default_rng(1)
    n, t, c = 600, 5, 3
    x = rng.normal(size=(n, t, c))
    x[rng.random(x.shape) < 0.01] = np.nan  # missing readings are filled, not propagated
    y = 2 * np.nan_to_num(x[:, -1, 0]) - np.nan_to_num(x[:, 0, 2]) + rng.normal(0, 0.1, n)
    split = np.array(["train"] * 400 + ["val"] * 100 + ["test"] * 100)
    pred, alpha = ridge(x, y, split == "train", split == "val")
    assert np.isfinite(pred).all() and alpha <= 10
    test = split == "test"
    assert np.abs(pred[test] - y[test]).mean() < 0.2
