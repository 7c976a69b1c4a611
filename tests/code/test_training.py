"""Training details that need no dataset on disk."""

import numpy as np
import pandas as pd
import torch

from stfn import base_forecast
from stfn.config import MovingDigitsParams
from stfn.data.contract import DatasetSpec
from stfn.data.moving_digits import make_moving_digits
from stfn.features import FeatureSet
from stfn.training import model_config


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
    base = base_forecast.choose(fs, fs.rows("train"), fs.rows("val"))
    assert base.name == "ridge" and list(base.scores) == ["ridge"]  # no timestamp, no target channel
    cfg = model_config(fs, ModelParams(dim=16, attention_hidden=16, linear_skip=True), base)
    model = build_model(cfg, seed=0).eval()
    base_forecast.apply(model, base)
    assert not model.skip.weight.requires_grad
    test = fs.rows("test")
    with torch.no_grad():
        out = model(torch.as_tensor(fs.series[test]), torch.as_tensor(fs.frames[test]))["output"][:, 0].numpy()
    assert np.abs(out - fs.labels[test]).mean() < 0.1  # the fusion branch starts at zero: output = ridge


def test_gpu_path_switches_are_off_on_the_cpu_unless_asked(tmp_path):
    from stfn.config import ModelParams, TrainParams
    from stfn.training import fit, switch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert switch("auto", cuda) and not switch("auto", cpu) and switch("on", cpu) and not switch("off", cuda)
    fs = regression_features(200)
    mp = ModelParams(dim=16, attention_hidden=16)
    plain = fit(fs, mp, TrainParams(epochs=1, batch_size=50, device="cpu"), 0, tmp_path / "a", resume=False)
    assert not any(plain.gpu_path.values())  # auto on the CPU: all off
    asked = TrainParams(epochs=1, batch_size=50, device="cpu", amp_bf16="on", fused_adamw="on", pin_memory="on")
    fast = fit(fs, mp, asked, 0, tmp_path / "b", resume=False)
    expected = {"amp_bf16": True, "tf32": False, "fused_adamw": True, "pin_memory": False, "compile": False}
    assert fast.gpu_path == expected
    assert np.isfinite(fast.history[0]["train_loss"])  # bf16 autocast and fused AdamW ran on the CPU
