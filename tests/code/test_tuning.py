"""stfn.tuning: the search space checked key by key (each bad space named, before any data is
read), the budget as a multiple of the auto epochs, and the best settings written into params.yaml
as the dataset's section with every other line and comment kept."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from stfn import tuning
from stfn.config import ConfigError, Params, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "empty"),
        ({"data.series_norm": {"choices": ["median"]}}, "not a setting to search"),
        ({"train.device": {"choices": ["cpu"]}}, "not a setting to search"),
        ({"model.width": {"low": 1, "high": 2}}, "no such parameter in the model section"),
        ({"train.lr": {"low": 0.01, "high": 0.001}}, "low < high"),
        ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"train.lr": {"low": 0.001}}, "expected low and high"),
        ({"model.alignment": {"choices": ["mfb", "concat"]}}, "'concat' is not a valid value"),
        ({"model.dropout": {"low": 0.0, "high": 1.5}}, "1.5 is not a valid value"),
        ({"model.dim": {"choices": []}}, "non-empty list"),
        ({"model.dim": 64}, "expected {low, high}"),
        ({"budget": {"low": 0, "high": 2}}, "budget"),
    ],
)
def test_a_bad_space_is_named_key_by_key(space, message):
    with pytest.raises(ConfigError, match="tune.space") as err:
        tuning.check_space(space, Params())
    assert message in str(err.value)


def test_the_default_space_checks_and_every_draw_is_valid_params():
    params = load_params(REPO / "params.yaml")
    space = tuning.check_space(params.tune.space, params)
    assert space["train.lr"] == {"kind": "float", "low": 3e-4, "high": 1e-2, "log": True}
    assert space["model.dim"]["kind"] == "categorical"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = tuning.suggest(study.ask(), space)
        p = tuning.apply(params, values, auto_epochs=40)
        assert p.train.epochs == max(1, round(40 * values["budget"])) and 20 <= p.train.epochs <= 120
        assert p.model.temporal_encoder == values["model.temporal_encoder"] and p.train.lr == values["train.lr"]


def test_the_best_settings_become_the_datasets_section_and_comments_stay(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    before = params_file.read_text()
    section = tuning.as_section({"train.lr": 0.004, "model.dim": 32, "budget": 2.0}, auto_epochs=10)
    assert section == {"train": {"lr": 0.004, "epochs": 20}, "model": {"dim": 32}}
    tuning.write_best(params_file, "my-data", section, "tuned by `stfn tune`: study 'my-data', trial 3")
    text = params_file.read_text()
    assert text.startswith(before[: before.index("datasets:")])  # every line before it as it was
    assert "# tuned by `stfn tune`: study 'my-data', trial 3" in text
    tuned = load_params(params_file, ["data.dataset=my-data"])
    assert (tuned.train.lr, tuned.train.epochs, tuned.model.dim) == (0.004, 20, 32)
    assert load_params(params_file).train.lr == Params().train.lr  # other datasets keep the defaults
    # a second study replaces the tuned keys and keeps what the section held besides
    tuning.write_best(params_file, "my-data", {"train": {"lr": 0.002}}, "tuned by `stfn tune`: study 'again'")
    again = load_params(params_file, ["data.dataset=my-data"])
    assert (again.train.lr, again.train.epochs, again.model.dim) == (0.002, 20, 32)
    assert params_file.read_text().count("datasets:") == 1


def test_a_section_that_would_not_load_is_never_written(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    before = params_file.read_text()
    with pytest.raises(ConfigError):
        tuning.write_best(params_file, "my-data", {"train": {"lr": -1.0}}, "bad")
    assert params_file.read_text() == before


def test_an_unreachable_storage_is_named_without_its_password(tmp_path):
    from stfn.config import Paths
    from stfn.stages.tune import open_study, storage_url

    url = storage_url(Paths(tmp_path), "postgresql://stfn:hunter2@127.0.0.1:9/none")
    assert url.startswith("postgresql+psycopg2://")  # the driver the project installs
    with pytest.raises(ConfigError, match="cannot be reached") as err:
        open_study(Params(), Paths(tmp_path), "s", url, {"train.lr": {}}, "accuracy")
    assert "hunter2" not in str(err.value) and "127.0.0.1:9" in str(err.value)


def test_a_trial_is_judged_on_the_figure_training_reports_each_epoch():
    """The key the tune stage reads from each epoch's row is the one stfn.training.score writes
    (a regression study once read `val_mae`, which no epoch has)."""
    import numpy as np

    from stfn.stages.tune import TRIAL_METRIC
    from stfn.training import score

    assert set(score("classification", np.eye(3), np.arange(3))) == {TRIAL_METRIC["classification"]}
    assert set(score("regression", np.zeros((3, 1)), np.ones(3))) == {TRIAL_METRIC["regression"]}
