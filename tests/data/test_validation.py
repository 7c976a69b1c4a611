"""Each corruption of a valid dataset is caught, and the message names the problem: the file and
the field (column, key, sample or place) that each case declares."""

import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stfn.errors import DataValidationError, Failure
from stfn.validation import validate_dataset


@dataclass(frozen=True)
class Field:
    """What a message must name besides the file: a column (of a table, or a statistic of the
    per-sample frames table), a key of dataset.yaml, a sample id, a place in the file's text, or
    the file as a whole (the problem is the file itself: missing, unreadable, cut short)."""

    kind: str  # "column" | "key" | "sample" | "place" | "whole file"
    name: str = ""

    def _said(self, text: str) -> bool:
        # the name as a token: not "frames" inside "frames.steps" or "frames.npy"
        return re.search(rf"(?<![\w.-]){re.escape(self.name)}(?![\w.-])", text) is not None

    def in_failure(self, f: Failure) -> bool:
        if self.kind == "column":
            return f.column == self.name
        if self.kind == "key":
            return f.column == self.name or (f.column is None and self._said(f.detail))
        if self.kind == "whole file":
            return f.column is None
        return self._said(str(f))  # sample, place: in the detail or the examples

    def in_text(self, text: str, file: str) -> bool:
        if self.kind == "column":
            return f"column '{self.name}'" in text
        if self.kind == "whole file":
            return f"{file}: " in text  # "frames.npy: a complete file failed: ..."
        return self._said(text)


column = lambda name: Field("column", name)  # noqa: E731
key = lambda name: Field("key", name)  # noqa: E731
sample = lambda name: Field("sample", name)  # noqa: E731
place = lambda name: Field("place", name)  # noqa: E731
WHOLE_FILE = Field("whole file")


def _samples(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "samples.parquet")


def _series(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "series.parquet")


def nan_channel(d):
    s = _series(d)
    s["zone-2"] = np.nan
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("zone-2"),), "expect_column_values_to_not_be_null"


def missing_column(d):
    _series(d).drop(columns=["zone-1"]).to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("zone-1"),), "column is missing"


def duplicate_id(d):
    s = _samples(d)
    s.loc[1, "sample_id"] = s.loc[0, "sample_id"]
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("sample_id"), sample(s.loc[0, "sample_id"])), "expect_column_values_to_be_unique"


def label_out_of_range(d):
    s = _samples(d)
    s.loc[5, "label"] = 10
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("label"), sample(s.loc[5, "sample_id"])), "expect_column_values_to_be_in_set"


def wrong_frame_shape(d):
    f = np.load(d / "frames.npy")
    np.save(d / "frames.npy", f[:, :, :, :, :31])
    return "frames.npy", (column("width"),), "expect_column_values_to_be_in_set"


def truncated_frames(d):
    raw = (d / "frames.npy").read_bytes()
    (d / "frames.npy").write_bytes(raw[: len(raw) // 2])
    return "frames.npy", (WHOLE_FILE,), "truncated"


def value_out_of_bounds(d):
    s = _series(d)
    s.loc[7, "zone-0"] = 1e6
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("zone-0"), sample(s.loc[7, "sample_id"])), "expect_column_values_to_be_between"


def missing_steps(d):
    s = _series(d)
    s.drop(index=s.index[(s["sample_id"] == s["sample_id"].iloc[0]) & (s["step"] == 5)]).to_parquet(
        d / "series.parquet", index=False
    )
    return "series.parquet", (column("n_steps"), sample(s["sample_id"].iloc[0])), "every sample has exactly T steps"


def id_only_in_series(d):
    s = _series(d)
    s.loc[s["sample_id"] == s["sample_id"].iloc[0], "sample_id"] = "ghost-1"
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("in_samples"), sample("ghost-1")), "every series sample_id is in samples.parquet"


def pickled_frames(d):
    np.save(d / "frames.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return "frames.npy", (WHOLE_FILE,), "pickled"


def not_parquet(d):
    (d / "samples.parquet").write_text("sample_id,label\na,1\n")
    return "samples.parquet", (WHOLE_FILE,), "parquet"


def unknown_yaml_key(d):
    spec = yaml.safe_load((d / "dataset.yaml").read_text())
    spec["colour"] = "blue"
    (d / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return "dataset.yaml", (key("colour"),), "unknown key"


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
    return "series.parquet", (column("zone-3"),), "expect_column_values_to_be_in_type_list"


def inf_in_frames(d):
    _float_frames(d, np.inf)
    return (
        "frames.npy",
        (column("nonfinite_count"), sample(_samples(d).loc[3, "sample_id"])),
        "expect_column_values_to_be_between",
    )


def nan_in_frames(d):
    _float_frames(d, np.nan)
    return (
        "frames.npy",
        (column("nonfinite_count"), sample(_samples(d).loc[3, "sample_id"])),
        "expect_column_values_to_be_between",
    )


def nan_label(d):
    s = _samples(d)
    s["label"] = s["label"].astype(float)
    s.loc[2, "label"] = np.nan
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("label"), sample(s.loc[2, "sample_id"])), "expect_column_values_to_not_be_null"


def duplicated_step(d):
    s = _series(d)
    first = s[s["sample_id"] == s["sample_id"].iloc[0]]
    s.loc[first.index[4], "step"] = 3
    s.to_parquet(d / "series.parquet", index=False)
    return (
        "series.parquet",
        (column("sample_id,step"), sample(s.loc[first.index[4], "sample_id"])),
        "expect_compound_columns_to_be_unique",
    )


def step_out_of_range(d):
    s = _series(d)
    s.loc[s.index[0], "step"] = 32
    s.to_parquet(d / "series.parquet", index=False)
    return (
        "series.parquet",
        (column("step"), sample(s.loc[s.index[0], "sample_id"])),
        "expect_column_values_to_be_between",
    )


def id_only_in_samples(d):
    s = _series(d)
    s[s["sample_id"] != s["sample_id"].iloc[0]].to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("n_steps"), sample(s["sample_id"].iloc[0])), "every sample has exactly T steps"


def empty_samples(d):
    _samples(d).iloc[:0].to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (WHOLE_FILE,), "expect_table_row_count_to_be_between(min_value=1)"


def empty_series_file(d):
    (d / "series.parquet").write_bytes(b"")
    return "series.parquet", (WHOLE_FILE,), "parquet"


def frames_wrong_dtype(d):
    np.save(d / "frames.npy", np.load(d / "frames.npy").astype(np.int16))
    return "frames.npy", (column("dtype"),), "expect_column_values_to_be_in_set"


def frames_fewer_rows(d):
    np.save(d / "frames.npy", np.load(d / "frames.npy")[:-1])
    return "frames.npy", (WHOLE_FILE,), "expect_table_row_count_to_equal(value=256)"


def yaml_wrong_type(d):
    spec = _spec(d)
    spec["series"]["steps"] = "many"
    _write_spec(d, spec)
    return "dataset.yaml", (key("series.steps"),), "integer"


def yaml_path_traversal_name(d):
    spec = _spec(d)
    spec["name"] = "../../etc/evil"
    _write_spec(d, spec)
    return "dataset.yaml", (key("name"),), "a-z, 0-9"


def yaml_huge_dimensions(d):
    spec = _spec(d)
    spec["frames"]["height"] = spec["frames"]["width"] = 100_000
    _write_spec(d, spec)
    return "dataset.yaml", (key("frames"),), "too large"


def yaml_future_frame_step(d):
    spec = _spec(d)
    spec["frames"]["steps"][-1] = 40
    _write_spec(d, spec)
    return "dataset.yaml", (key("frames.steps"),), "every step must be in [0, 31]"


def missing_frames_file(d):
    (d / "frames.npy").unlink()
    return "frames.npy", (WHOLE_FILE,), "missing"


def yaml_not_yaml(d):
    (d / "dataset.yaml").write_text("name: [unclosed\n  task: : :")
    return "dataset.yaml", (place("line 1, column 7"),), "valid YAML"


def yaml_binary(d):
    (d / "dataset.yaml").write_bytes(bytes(range(256)) * 4)  # NUL and control bytes, not UTF-8
    return "dataset.yaml", (WHOLE_FILE,), "valid YAML"


def yaml_not_utf8(d):
    (d / "dataset.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))  # readable text, wrong encoding
    return "dataset.yaml", (WHOLE_FILE,), "valid YAML"


def yaml_empty(d):
    (d / "dataset.yaml").write_text("")
    return "dataset.yaml", (WHOLE_FILE,), "a mapping"


def yaml_not_a_mapping(d):
    (d / "dataset.yaml").write_text("- name: moving-digits\n- task: classification\n")
    return "dataset.yaml", (WHOLE_FILE,), "a mapping"


def invalid_split_value(d):
    s = _samples(d)
    s["split"] = "train"
    s.loc[0, "split"] = "training"
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("split"), sample(s.loc[0, "sample_id"])), "expect_column_values_to_be_in_set"


def yaml_steps_disagree_with_series(d):
    """dataset.yaml and series.parquet disagree: the key and its value, and what the file holds."""
    spec = _spec(d)
    spec["series"]["steps"] = 24
    spec["frames"]["steps"] = [min(s, 23) for s in spec["frames"]["steps"]]
    _write_spec(d, spec)
    return "series.parquet", (column("step"), place("series.steps: 24"), place("0 to 31")), "dataset.yaml says"


def yaml_channel_not_in_series(d):
    spec = _spec(d)
    spec["series"]["channels"][1]["name"] = "zone-9"
    spec["sensors"] = {("zone-9" if k == "zone-1" else k): v for k, v in spec["sensors"].items()}
    _write_spec(d, spec)
    return "series.parquet", (column("zone-9"), place("zone-1")), "the file holds the columns"


def yaml_channel_bound_not_a_number(d):
    spec = _spec(d)
    spec["series"]["channels"][0]["max"] = float("nan")
    _write_spec(d, spec)
    return "dataset.yaml", (key("series.channels.0.max"),), "finite number"


def yaml_duplicate_class_names(d):
    spec = _spec(d)
    spec["target"]["classes"][1] = spec["target"]["classes"][0]
    _write_spec(d, spec)
    return "dataset.yaml", (key("target"),), "distinct"


def yaml_sensor_outside_the_frame(d):
    spec = _spec(d)
    spec["sensors"]["zone-0"] = [0.5, 1.5]
    _write_spec(d, spec)
    return "dataset.yaml", (key("sensors.zone-0"),), "must be in [0, 1]"


def timestamp_as_text(d):
    s = _samples(d)
    s["timestamp"] = [f"day {i}" for i in range(len(s))]
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("timestamp"),), "column type is datetime"


def sample_id_as_number(d):
    for name in ("samples", "series"):
        table = pd.read_parquet(d / f"{name}.parquet")
        table["sample_id"] = table["sample_id"].astype("category").cat.codes.astype(np.int64)
        table.to_parquet(d / f"{name}.parquet", index=False)
    return "samples.parquet", (column("sample_id"),), "column type is string"


def step_as_fraction(d):
    s = _series(d)
    s["step"] = s["step"].astype(np.float64)
    s.loc[3, "step"] = 2.5
    s.to_parquet(d / "series.parquet", index=False)
    return "series.parquet", (column("step"),), "column type is integer"


def class_label_as_fraction(d):
    s = _samples(d)
    s["label"] = s["label"].astype(np.float64)
    s.loc[2, "label"] = 1.5
    s.to_parquet(d / "samples.parquet", index=False)
    return "samples.parquet", (column("label"), place("task: classification")), "column type is integer"


def link_outside_the_dataset(d):
    """A contract file that is a link to a file outside the dataset folder (and any DVC cache)."""
    outside = d.parent / f"{d.name}-elsewhere.parquet"
    (d / "samples.parquet").rename(outside)
    (d / "samples.parquet").symlink_to(outside)
    return "samples.parquet", (WHOLE_FILE, place(str(outside))), "a link to"


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
    yaml_binary,
    yaml_not_utf8,
    yaml_empty,
    yaml_not_a_mapping,
    invalid_split_value,
    yaml_steps_disagree_with_series,
    yaml_channel_not_in_series,
    yaml_channel_bound_not_a_number,
    yaml_duplicate_class_names,
    yaml_sensor_outside_the_frame,
    timestamp_as_text,
    sample_id_as_number,
    step_as_fraction,
    class_label_as_fraction,
    link_outside_the_dataset,
]

# Through the three commands in `make test`: one case for each file of the contract and each kind of
# fault (a value, a shape, a type, an unreadable or missing file, a link, the yaml's keys). All
# of them reach the commands through the same `validate_dataset` that test_corruption_is_caught_and_named
# runs on the whole corpus; the rest of the corpus goes through the commands in `make test-all`
# (about 2.5 s a case, 70 s of `make test` for 28 more cases; CONTRIBUTING.md).
THROUGH_THE_COMMANDS = {
    nan_channel,
    wrong_frame_shape,
    truncated_frames,
    not_parquet,
    empty_samples,
    missing_frames_file,
    yaml_not_yaml,
    yaml_binary,  # dataset.yaml's kinds of unreadable: each command reads it through the contract's reader
    yaml_not_utf8,
    yaml_empty,
    yaml_not_a_mapping,
    yaml_path_traversal_name,
    invalid_split_value,
    timestamp_as_text,
    link_outside_the_dataset,
    id_only_in_series,
}


def test_clean_dataset_passes(tiny_dataset, tmp_path):
    report = validate_dataset(tiny_dataset, 0.05, tmp_path / "report.json")
    assert report.success and report.summary()["failed"] == 0
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.html").is_file()


def _check_named(text: str, file: str, fields: tuple[Field, ...], what) -> None:
    """`text` (an error message, a command's output) names the file and every declared field."""
    assert file in text, (what, f"{file} not named", text[-3000:])
    for field in fields:
        assert field.in_text(text, file), (what, f"{field} not named", text[-3000:])


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corruption_is_caught_and_named(corrupt, dataset_copy, tmp_path):
    file, fields, words = corrupt(dataset_copy)
    assert fields, "every case declares the field that must be named"
    with pytest.raises(DataValidationError) as info:
        validate_dataset(dataset_copy, 0.05, tmp_path / "report.json")
    failures = info.value.failures
    # one failure of that file says the words and names every declared field
    hit = [
        f
        for f in failures
        if f.file.startswith(file) and words in str(f) and all(field.in_failure(f) for field in fields)
    ]
    assert hit, f"no failure of {file} names {fields} with {words!r}: {failures}"
    _check_named(str(info.value), file, fields, "validate_dataset")


@pytest.mark.parametrize("corrupt", [nan_channel, truncated_frames], ids=lambda f: f.__name__)
def test_cli_validate_exits_non_zero_with_a_readable_message(corrupt, dataset_copy, tmp_path):
    file, fields, _ = corrupt(dataset_copy)
    stfn = Path(sys.executable).with_name("stfn")
    proc = subprocess.run(
        [str(stfn), "validate", str(dataset_copy)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    _check_named(proc.stderr, file, fields, "stfn validate")


def _files(root: Path) -> dict[str, int]:
    """Every file under the project but its local state folder (.stfn: Prefect home, caches, the
    reports of refused data), with its size."""
    files = [p for p in root.rglob("*") if p.is_file() and ".stfn" not in p.parts]
    return {str(p.relative_to(root)): p.stat().st_size for p in files}


def _versions() -> int:
    from mlflow import MlflowClient

    return len(MlflowClient().search_model_versions())


@pytest.mark.slow
@pytest.mark.parametrize(
    "corrupt",
    [pytest.param(c, marks=() if c in THROUGH_THE_COMMANDS else pytest.mark.thorough) for c in CORRUPTIONS],
    ids=lambda f: f.__name__,
)
def test_every_corruption_is_refused_by_validate_ingest_and_run_and_nothing_is_written(
    corrupt, dataset_copy, tmp_path, write_tiny_params, monkeypatch
):
    """The corpus through the commands a user runs (in-process, as `stfn ...`): exit code 2, the
    file and the field named, no traceback; nothing written among the project's files, no model registered."""
    from typer.testing import CliRunner

    from stfn.cli import app

    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml")
    file, fields, _ = corrupt(dataset_copy)
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
        assert "Traceback" not in said, (args, said[-3000:])
        _check_named(said, file, fields, args)
    assert _files(project) == before  # no half-written dataset, features, model or report
    assert _versions() == versions


def test_missing_readings_over_the_threshold_name_the_setting_and_the_setting_accepts_them(
    dataset_copy, tmp_path, write_tiny_params, monkeypatch
):
    """A channel 40 % missing: refused naming data.max_missing_ratio and a value that accepts it;
    accepted with `--set` on validate and ingest, and by the dataset's own `datasets.<name>`
    section of params.yaml (which `stfn validate` / `stfn ingest` apply by the dataset's name)."""
    import yaml
    from typer.testing import CliRunner

    from stfn.cli import app

    s = _series(dataset_copy)
    s.loc[s.index % 5 < 2, "zone-1"] = np.nan  # 40 % of zone-1's readings (a little more with the generator's)
    s.to_parquet(dataset_copy / "series.parquet", index=False)
    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml")
    monkeypatch.chdir(project)

    def stfn(*args: str):
        saved, logging.root.handlers = logging.root.handlers, []
        try:
            return CliRunner().invoke(app, list(args))
        finally:
            logging.root.handlers = saved

    folder = str(dataset_copy)
    refused = stfn("validate", folder)
    assert refused.exit_code == 2, refused.output[-2000:]
    said = " ".join(refused.output.split())
    assert "zone-1" in said and "over data.max_missing_ratio = 0.30" in said, said[-2000:]
    assert "--set data.max_missing_ratio=0.45" in said and "datasets.<name>" in said  # 40.x % found
    assert stfn("validate", folder, "--set", "data.max_missing_ratio=0.45").exit_code == 0
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["datasets"] = {"moving-digits": {"data": {"max_missing_ratio": 0.5}}}  # this dataset only
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    accepted = stfn("validate", folder)
    assert accepted.exit_code == 0, accepted.output[-2000:]
    assert stfn("validate", folder, "--set", "data.max_missing_ratio=0.05").exit_code == 2  # --set wins
    ingested = stfn("ingest", folder)
    assert ingested.exit_code == 0 and (project / "data" / "raw" / "moving-digits").is_dir(), ingested.output


def test_a_regression_dataset_without_target_channel_is_told_what_declaring_it_adds(dataset_copy):
    from stfn.stages.validate import hints

    assert hints(dataset_copy) == []  # classification: nothing to add
    spec = _spec(dataset_copy)
    spec["task"], spec["target"] = "regression", {"name": "load", "unit": "kW"}
    _write_spec(dataset_copy, spec)
    (hint,) = hints(dataset_copy)
    assert "target.channel is not declared" in hint and "persistence baseline" in hint
    spec["target"]["channel"] = "zone-0"
    _write_spec(dataset_copy, spec)
    assert hints(dataset_copy) == []


@pytest.mark.parametrize("cache_dir", [None, "../elsewhere-cache"], ids=["default-cache", "cache-dir-set"])
def test_dvc_symlinked_checkouts_still_validate(tiny_dataset, tmp_path, cache_dir):
    """DVC's symlink checkouts point the dataset's files into its cache (`.dvc/cache`, or the
    `cache.dir` the repo sets): those links are followed; the refusal is for links elsewhere."""
    import shutil

    repo = tmp_path / "repo"
    folder = repo / "data" / "raw" / tiny_dataset.name
    shutil.copytree(tiny_dataset, folder)
    dvc = [str(Path(sys.executable).with_name("dvc"))]
    steps = [["init", "--no-scm", "-q"], ["config", "cache.type", "symlink"]]
    if cache_dir:
        steps.append(["cache", "dir", cache_dir])
    steps.append(["add", "-q", str(folder.relative_to(repo))])
    for args in steps:
        proc = subprocess.run(dvc + args, cwd=repo, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert all((folder / f).is_symlink() for f in ("dataset.yaml", "samples.parquet", "frames.npy"))
    assert validate_dataset(folder, 0.05, tmp_path / "report.json").success
