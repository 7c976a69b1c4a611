"""Training details that need no dataset on disk."""

import numpy as np
import pandas as pd
import torch

from stfn.config import MovingDigitsParams
from stfn.data import DatasetSpec, make_moving_digits
from stfn.features import FeatureSet
from stfn.training import init_linear_skip, model_config


def regression_features(n: int = 300) -> FeatureSet:
    spec = make_moving_digits(MovingDigitsParams(n_train=8, n_val=4, n_test=4))[0].model_dump()
    spec.update(task="regression", target={"name": "y", "unit": "m"})
    spec = DatasetSpec.model_validate(spec)
    rng = np.random.default_rng(0)
    series = rng.normal(size=(n, spec.series.steps, 4)).astype(np.float32)
    series[rng.random(series.shape) < 0.01] = np.nan
    labels = (2 * np.nan_to_num(series[:, -1, 0]) - np.nan_to_num(series[:, 3, 2]) + 0.5).astype(np.float32)
    split = np.array(["train"] * (n - 100) + ["val"] * 50 + ["test"] * 50)
    index = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split, "row": np.arange(n)})
    frames = np.zeros((n, *spec.frames.shape), np.float32)
    return FeatureSet(None, spec, series, frames, labels, index, {"stats": {}})


def test_linear_skip_starts_as_the_ridge_forecast_and_stays_frozen():
    from stfn.config import ModelParams
    from stfn.models import build_model

    fs = regression_features()
    cfg = model_config(fs, ModelParams(dim=16, attention_hidden=16, linear_skip=True))
    model = build_model(cfg, seed=0).eval()
    alpha = init_linear_skip(model, fs, fs.rows("train"), fs.rows("val"))
    assert alpha <= 10 and not model.skip.weight.requires_grad
    test = fs.rows("test")
    with torch.no_grad():
        out = model(torch.as_tensor(fs.series[test]), torch.as_tensor(fs.frames[test]))["output"][:, 0].numpy()
    assert np.abs(out - fs.labels[test]).mean() < 0.1  # the fusion branch starts at zero: output = ridge
