"""Settings left `auto` are chosen from the dataset's task, a given value wins, and with the linear
skip (the regression default) training keeps only epochs that beat the linear start on val."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from stfn import defaults
from stfn.config import ModelParams, Params, TrainParams, load_params


def test_auto_settings_follow_the_task_with_the_reason():
    reg, choices = defaults.resolve(Params(), "regression", n_train=1000)
    assert reg.data.series_norm == "global" and reg.model.linear_skip is True
    keys = ["data.series_norm", "model.linear_skip", "train.epochs", "train.patience", "model.calendar"]
    assert [c.key for c in choices] == keys
    assert all(not c.given and c.reason.startswith("regression") for c in choices[:2])
    cls, _ = defaults.resolve(Params(), "classification", n_train=1000)
    assert cls.data.series_norm == "median" and cls.model.linear_skip is False
    assert Params().data.series_norm == "auto"  # the original is left as it was
    assert choices[0].line() == "data.series_norm=global (auto: " + choices[0].reason + ")"
    tags = defaults.as_tags(choices)
    assert tags["stfn.auto.model.linear_skip"].startswith("true (auto: regression")


def test_a_given_value_wins_from_params_a_dataset_section_or_the_command_line(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "data: {series_norm: auto}\nmodel: {linear_skip: auto}\ndatasets:\n  wind:\n    data: {series_norm: median}\n"
    )
    section = load_params(tmp_path / "params.yaml", ["data.dataset=wind"])
    resolved, choices = defaults.resolve(section, "regression", n_train=100)
    assert resolved.data.series_norm == "median" and choices[0].given  # the dataset's section
    assert resolved.model.linear_skip is True and not choices[1].given
    cli = load_params(tmp_path / "params.yaml", ["data.dataset=wind", "model.linear_skip=false"])
    resolved, choices = defaults.resolve(cli, "regression", n_train=100)
    assert resolved.model.linear_skip is False and choices[1].given  # --set
    assert "given" in choices[1].line()


def test_a_model_is_never_built_with_an_unresolved_setting():
    from stfn.models import STFNConfig

    with pytest.raises(ValidationError, match="linear_skip"):
        STFNConfig(
            linear_skip="auto", series_channels=1, frame_channels=1, frame_size=(8, 8), frame_steps=[0], steps=2,
            n_outputs=1,
        )  # fmt: skip
    assert defaults.value("model.linear_skip", "auto", "classification") is False
    assert defaults.value("model.linear_skip", True, "classification") is True


def test_training_keeps_the_linear_start_unless_an_epoch_beats_it_on_val(tmp_path):
    """Epoch 0 is the ridge forecast (skip fitted and frozen, fusion branch at zero): with a
    learning rate too small to change anything, no epoch beats it and the saved model is it."""
    from test_training import regression_features

    from stfn.inference import load_checkpoint, predict_arrays
    from stfn.training import fit, model_config

    fs = regression_features(300)  # 200 training rows for the 32 x 4 window
    mp = ModelParams(dim=16, attention_hidden=16)  # linear_skip: auto -> on for regression
    assert model_config(fs, mp).linear_skip is True
    result = fit(fs, mp, TrainParams(epochs=2, batch_size=50, lr=1e-12, device="cpu"), 0, tmp_path, resume=False)
    assert result.best_epoch == 0 and len(result.history) == 2
    model, _ = load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))
    val = fs.rows("val")
    out, _ = predict_arrays(model, fs.series[val], fs.frames[val])
    assert np.abs(out[:, 0] - fs.labels[val]).mean() == pytest.approx(result.best_val, rel=1e-5)
    assert np.abs(out[:, 0] - fs.labels[val]).mean() < 0.1  # the ridge forecast of a linear target
    # a learning rate that can learn keeps an epoch only when it is better than the start on val
    learnt = fit(fs, mp, TrainParams(epochs=3, batch_size=50, device="cpu"), 0, tmp_path / "b", resume=False)
    scores = {0: result.best_val, **{int(r["epoch"]): r["val_mae_std"] for r in learnt.history}}
    assert learnt.best_val == pytest.approx(min(scores.values())) and scores[learnt.best_epoch] == learnt.best_val


def test_the_verdict_against_the_baselines_says_plainly_who_wins():
    from stfn.evaluation import versus_baselines

    baselines = {"ridge": {"test": {"mae": 3.0}}, "persistence": {"test": {"mae": 3.4}}}
    win = versus_baselines({"mae": 2.97}, baselines, "mae")
    assert win["stfn_wins"] and win["best_baseline"] == "ridge" and "beats every baseline" in win["text"]
    lose = versus_baselines({"mae": 3.2}, baselines, "mae")
    assert not lose["stfn_wins"] and lose["text"].startswith("the ridge baseline wins: test mae 3 vs STFN's 3.2")


@pytest.mark.parametrize(
    ("n_train", "epochs", "patience"),
    [
        (12000, 5, 4),  # moving-digits: 188 steps an epoch, 940 in all
        (4200, 15, 4),  # 66 steps an epoch: 990
        (394, 143, 29),  # 7 steps an epoch: 1001
        (40000, 5, 4),  # never under 5 epochs
        (10, 500, 100),  # one batch: capped
    ],
)
def test_the_training_budget_is_about_a_thousand_steps_whatever_the_size(n_train, epochs, patience):
    resolved, choices = defaults.resolve(Params(), "classification", n_train=n_train)
    assert (resolved.train.epochs, resolved.train.patience) == (epochs, patience)
    budget = {c.key: c for c in choices}
    assert not budget["train.epochs"].given and f"{n_train} training samples" in budget["train.epochs"].reason
    steps = -(-n_train // resolved.train.batch_size)
    assert epochs * steps >= min(defaults.STEP_BUDGET * 0.9, defaults.MAX_EPOCHS * steps)


def test_a_given_budget_is_kept_and_patience_follows_the_given_epochs():
    params = Params(train=TrainParams(epochs=30))
    resolved, choices = defaults.resolve(params, "classification")  # no sample count needed
    assert resolved.train.epochs == 30 and resolved.train.patience == 6
    assert {c.key: c.given for c in choices}["train.epochs"] is True
    fixed = TrainParams(epochs=3, patience=2)
    assert defaults.train_budget(fixed, 10) == fixed
    assert defaults.train_budget(TrainParams(), 12000).epochs == 5
