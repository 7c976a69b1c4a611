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


def test_on_and_off_mean_the_switch_not_a_boolean(tmp_path):
    """YAML 1.1 reads `on` / `off` as true / false: `--set train.amp_bf16=on` and `tf32: off` in
    params.yaml are the switch's values, as written (they were refused as "got True")."""
    (tmp_path / "params.yaml").write_text("train:\n  tf32: off\n  compile: auto\n")
    params = load_params(tmp_path / "params.yaml", ["train.amp_bf16=on"])
    assert (params.train.amp_bf16, params.train.tf32, params.train.compile) == ("on", "off", "auto")
    with pytest.raises(ConfigError, match=r"train\.fused_adamw"):
        load_params(tmp_path / "params.yaml", ["train.fused_adamw=maybe"])


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


PROFILED = """
train: {epochs: 8, lr: 0.002}
data: {dataset: moving-digits}
datasets:
  irish-wind:
    data: {series_norm: global}
    train: {epochs: 20}
"""


def test_dataset_section_applies_only_to_its_dataset_and_overrides_still_win(tmp_path):
    (tmp_path / "params.yaml").write_text(PROFILED)
    base = load_params(tmp_path / "params.yaml")
    assert base.train.epochs == 8 and base.data.series_norm == "auto"
    wind = load_params(tmp_path / "params.yaml", ["data.dataset=irish-wind"])
    assert wind.train.epochs == 20 and wind.data.series_norm == "global" and wind.train.lr == 0.002
    forced = load_params(tmp_path / "params.yaml", ["data.dataset=irish-wind", "train.epochs=2"])
    assert forced.train.epochs == 2 and forced.data.series_norm == "global"
    by_path = load_params(tmp_path / "params.yaml", [f"data.dataset={tmp_path}/irish-wind"])
    assert by_path.train.epochs == 20  # a folder path uses its folder name


def test_typo_in_an_unused_dataset_section_is_still_an_error(tmp_path):
    (tmp_path / "params.yaml").write_text(PROFILED.replace("epochs: 20", "epohcs: 20"))
    with pytest.raises(ConfigError, match=r"(?s)datasets\.irish-wind.*train\.epohcs: unknown key"):
        load_params(tmp_path / "params.yaml")


def test_a_bare_dataset_name_means_the_ingested_copy(tmp_path, monkeypatch):
    """After `stfn ingest my-dataset`, `--dataset my-dataset` is data/raw/my-dataset, even when the
    folder it was ingested from is in the current directory; a path is a path."""
    from stfn.config import Paths

    project, outside = tmp_path / "project", tmp_path / "outside"
    for folder in (project / "data" / "raw" / "my-dataset", outside / "my-dataset", outside / "other"):
        folder.mkdir(parents=True)
        (folder / "dataset.yaml").write_text("name: x\n")
    paths = Paths(project)
    monkeypatch.chdir(outside)
    assert paths.dataset_dir("my-dataset") == project / "data" / "raw" / "my-dataset"
    assert paths.dataset_dir("./my-dataset") == (outside / "my-dataset").resolve()
    assert paths.dataset_dir(str(outside / "my-dataset")) == (outside / "my-dataset").resolve()
    assert paths.dataset_dir("other") == (outside / "other").resolve()  # not ingested: the folder here
    assert paths.dataset_dir("missing") == project / "data" / "raw" / "missing"
