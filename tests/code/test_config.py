from pathlib import Path

import pytest

from stfn.config import ConfigError, Params, apply_overrides, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_yaml_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.dataset == "moving-digits"
    assert params.prepare.moving_digits.frames == 8


def test_override_sets_nested_value_with_yaml_typing():
    params = load_params(REPO / "params.yaml", ["train.epochs=3", "model.dim=16", "registry.min_improvement=0.01"])
    assert params.train.epochs == 3 and params.model.dim == 16 and params.registry.min_improvement == 0.01


def test_typo_in_key_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epohcs: unknown key"):
        load_params(REPO / "params.yaml", ["train.epohcs=3"])


def test_wrong_type_is_an_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_params(tmp_path / "params.yaml")


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_digest_changes_with_params():
    a, b = Params(), Params.model_validate({"train": {"epochs": 2}})
    assert a.digest() != b.digest() and a.digest() == Params().digest()
