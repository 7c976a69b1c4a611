"""Each corruption of a valid dataset is caught, and the message names the problem."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stfn.errors import DataValidationError
from stfn.validation import validate_dataset


def _samples(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "samples.parquet")


def _series(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "series.parquet")


def nan_channel(d):
    s = _series(d)
    s["zone-2"] = np.nan
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "zone-2", "expect_column_values_to_not_be_null"


def missing_column(d):
    _series(d).drop(columns=["zone-1"]).to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "zone-1", "column is missing"


def duplicate_id(d):
    s = _samples(d)
    s.loc[1, "sample_id"] = s.loc[0, "sample_id"]
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", "sample_id", "expect_column_values_to_be_unique"


def label_out_of_range(d):
    s = _samples(d)
    s.loc[5, "label"] = 10
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", "label", "expect_column_values_to_be_in_set"


def wrong_frame_shape(d):
    f = np.load(d / "frames.npy")
    np.save(d / "frames.npy", f[:, :, :, :, :31])
    return "frames.npy", "width", "expect_column_values_to_be_in_set"


def truncated_frames(d):
    raw = (d / "frames.npy").read_bytes()
    (d / "frames.npy").write_bytes(raw[: len(raw) // 2])
    return "frames.npy", None, "truncated"


def value_out_of_bounds(d):
    s = _series(d)
    s.loc[7, "zone-0"] = 1e6
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "zone-0", "expect_column_values_to_be_between"


def missing_steps(d):
    s = _series(d)
    s.drop(index=s.index[(s["sample_id"] == s["sample_id"].iloc[0]) & (s["step"] == 5)]).to_parquet(
        d / "series.parquet", index=False
    )
    return "series.parquet", "n_steps", "every sample has exactly T steps"


def id_only_in_series(d):
    s = _series(d)
    s.loc[s["sample_id"] == s["sample_id"].iloc[0], "sample_id"] = "ghost-1"
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "in_samples", "every series sample_id is in samples.parquet"


def pickled_frames(d):
    np.save(d / "frames.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return "frames.npy", None, "pickled"


def not_parquet(d):
    (d / "samples.parquet").write_text("sample_id,label\na,1\n")
    return "samples.parquet", None, "parquet"


def unknown_yaml_key(d):
    spec = yaml.safe_load((d / "dataset.yaml").read_text())
    spec["colour"] = "blue"
    (d / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return "dataset.yaml", "colour", "unknown key"


def _spec(d: Path) -> dict:
    return yaml.safe_load((d / "dataset.yaml").read_text())


def _write_spec(d: Path, spec: dict) -> None:
    (d / "dataset.yaml").write_text(yaml.safe_dump(spec))


def _float_frames(d: Path, poison: float) -> None:
    f = np.load(d / "frames.npy").astype(np.float32)
    f[3, 1, 0, 5, 5] = poison
    np.save(d / "frames.npy", f)
    spec = _spec(d)
    spec["frames"]["dtype"] = "float32"
    _write_spec(d, spec)


def series_as_text(d):
    s = _series(d)
    s["zone-3"] = s["zone-3"].astype(str)
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "zone-3", "expect_column_values_to_be_in_type_list"


def inf_in_frames(d):
    _float_frames(d, np.inf)
    return "frames.npy", "nonfinite_count", "expect_column_values_to_be_between"


def nan_in_frames(d):
    _float_frames(d, np.nan)
    return "frames.npy", "nonfinite_count", "expect_column_values_to_be_between"


def nan_label(d):
    s = _samples(d)
    s["label"] = s["label"].astype(float)
    s.loc[2, "label"] = np.nan
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", "label", "expect_column_values_to_not_be_null"


def duplicated_step(d):
    s = _series(d)
    first = s[s["sample_id"] == s["sample_id"].iloc[0]]
    s.loc[first.index[4], "step"] = 3
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "sample_id,step", "expect_compound_columns_to_be_unique"


def step_out_of_range(d):
    s = _series(d)
    s.loc[s.index[0], "step"] = 32
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "step", "expect_column_values_to_be_between"


def id_only_in_samples(d):
    s = _series(d)
    s[s["sample_id"] != s["sample_id"].iloc[0]].to_parquet(d / "series.parquet", index=False)
    return "series.parquet", "n_steps", "every sample has exactly T steps"


def empty_samples(d):
    _samples(d).iloc[:0].to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", None, "expect_table_row_count_to_be_between(min_value=1)"


def empty_series_file(d):
    (d / "series.parquet").write_bytes(b"")
    return "series.parquet", None, "parquet"


def frames_wrong_dtype(d):
    np.save(d / "frames.npy", np.load(d / "frames.npy").astype(np.int16))
    return "frames.npy", "dtype", "expect_column_values_to_be_in_set"


def frames_fewer_rows(d):
    np.save(d / "frames.npy", np.load(d / "frames.npy")[:-1])
    return "frames.npy", None, "expect_table_row_count_to_equal(value=256)"


def yaml_wrong_type(d):
    spec = _spec(d)
    spec["series"]["steps"] = "many"
    _write_spec(d, spec)
    return "dataset.yaml", "series.steps", "integer"


def yaml_path_traversal_name(d):
    spec = _spec(d)
    spec["name"] = "../../etc/evil"
    _write_spec(d, spec)
    return "dataset.yaml", None, "a-z, 0-9"


def yaml_huge_dimensions(d):
    spec = _spec(d)
    spec["frames"]["height"] = spec["frames"]["width"] = 100_000
    _write_spec(d, spec)
    return "dataset.yaml", None, "too large"


def yaml_future_frame_step(d):
    spec = _spec(d)
    spec["frames"]["steps"][-1] = 40
    _write_spec(d, spec)
    return "dataset.yaml", None, "frames.steps"


def missing_frames_file(d):
    (d / "frames.npy").unlink()
    return "frames.npy", None, "missing"


def yaml_not_yaml(d):
    (d / "dataset.yaml").write_text("name: [unclosed\n  task: : :")
    return "dataset.yaml", None, "valid YAML"


def invalid_split_value(d):
    s = _samples(d)
    s["split"] = "train"
    s.loc[0, "split"] = "training"
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", "split", "expect_column_values_to_be_in_set"


CORRUPTIONS = [
    nan_channel,
    missing_column,
    duplicate_id,
    label_out_of_range,
    wrong_frame_shape,
    truncated_frames,
    value_out_of_bounds,
    missing_steps,
    id_only_in_series,
    pickled_frames,
    not_parquet,
    unknown_yaml_key,
    series_as_text,
    inf_in_frames,
    nan_in_frames,
    nan_label,
    duplicated_step,
    step_out_of_range,
    id_only_in_samples,
    empty_samples,
    empty_series_file,
    frames_wrong_dtype,
    frames_fewer_rows,
    yaml_wrong_type,
    yaml_path_traversal_name,
    yaml_huge_dimensions,
    yaml_future_frame_step,
    missing_frames_file,
    yaml_not_yaml,
    invalid_split_value,
]


def test_clean_dataset_passes(tiny_dataset, tmp_path):
    report = validate_dataset(tiny_dataset, 0.05, tmp_path / "report.json")
    assert report.success and report.summary()["failed"] == 0
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corruption_is_caught_and_named(corrupt, dataset_copy, tmp_path):
    file, column, words = corrupt(dataset_copy)
    with pytest.raises(DataValidationError) as info:
        validate_dataset(dataset_copy, 0.05, tmp_path / "report.json")
    failures = info.value.failures
    hit = [f for f in failures if f.file.startswith(file) and (column is None or f.column == column)]
    assert hit, f"no failure names {file}/{column}: {failures}"
    assert any(words in str(f) for f in hit), str(info.value)
    assert file in str(info.value)


@pytest.mark.parametrize("corrupt", [nan_channel, truncated_frames], ids=lambda f: f.__name__)
def test_cli_validate_exits_non_zero_with_a_readable_message(corrupt, dataset_copy, tmp_path):
    file, column, _ = corrupt(dataset_copy)
    stfn = Path(sys.executable).with_name("stfn")
    proc = subprocess.run(
        [str(stfn), "validate", str(dataset_copy)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert file in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    if column:
        assert column in proc.stderr


def _files(root: Path) -> dict[str, int]:
    """Every file under the project but its local state folder (.stfn: Prefect home, caches, the
    reports of refused data), with its size."""
    files = [p for p in root.rglob("*") if p.is_file() and ".stfn" not in p.parts]
    return {str(p.relative_to(root)): p.stat().st_size for p in files}


def _versions() -> int:
    from mlflow import MlflowClient

    return len(MlflowClient().search_model_versions())


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_every_corruption_is_refused_by_validate_ingest_and_run_and_nothing_is_written(
    corrupt, dataset_copy, tmp_path, write_tiny_params, monkeypatch
):
    """The corpus through the commands a user runs (in-process, as `stfn ...`): exit code 2, the
    file named, no traceback; nothing written among the project's files, no model registered."""
    from typer.testing import CliRunner

    from stfn.cli import app

    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml")
    file, column, _ = corrupt(dataset_copy)
    monkeypatch.chdir(project)
    before, versions = _files(project), _versions()
    folder = str(dataset_copy)
    for args in (["validate", folder], ["ingest", folder], ["run", "--dataset", folder]):
        saved, logging.root.handlers = logging.root.handlers, []  # the command's log lines go to its output,
        try:  # as in a terminal (`stfn` sets up logging on each start)
            result = CliRunner().invoke(app, args)
        finally:
            logging.root.handlers = saved
        said = result.output
        assert result.exit_code == 2, (args, said[-3000:], result.exception)
        assert file in said and "Traceback" not in said, (args, said[-3000:])
    assert _files(project) == before  # no half-written dataset, features, model or report
    assert _versions() == versions
