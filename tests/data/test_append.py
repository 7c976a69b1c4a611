"""`stfn ingest --append` (stfn.stages.ingest.append): a batch joins an ingested dataset
with its splits, as a new DVC version; a batch out of contract, reusing ids, or aimed at the
built-in generated dataset is refused, naming why, and nothing changes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stfn.config import MovingDigitsParams, Params, Paths
from stfn.data.contract import write_dataset
from stfn.data.moving_digits import make_moving_digits
from stfn.errors import DataValidationError
from stfn.fileio import dir_md5
from stfn.stages.ingest import append

NAME = "append-digits"


def write(folder: Path, seed: int, prefix: str, split: bool = True) -> Path:
    spec, samples, series, frames = make_moving_digits(
        MovingDigitsParams(n_train=60, n_val=20, n_test=20, seed=seed), name=NAME
    )
    samples["sample_id"] = prefix + samples["sample_id"]
    series["sample_id"] = prefix + series["sample_id"]
    return write_dataset(folder, spec, samples if split else samples.drop(columns="split"), series, frames)


@pytest.fixture
def project(tmp_path) -> Path:
    write(tmp_path / "data" / "raw" / NAME, 1, "")
    return tmp_path


def test_a_batch_is_appended_with_its_splits_as_a_new_dvc_version(project, tmp_path):
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=project, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "add", "-q", f"data/raw/{NAME}"], cwd=project,
                   check=True)  # fmt: skip
    before = yaml.safe_load((project / "data" / "raw" / f"{NAME}.dvc").read_text())["outs"][0]["md5"]
    old_frames = np.load(project / "data" / "raw" / NAME / "frames.npy")
    batch = write(tmp_path / "batch", 2, "b-", split=False)
    out = append(Params(), Paths(project), batch, NAME)
    assert out["added"] == 100 and out["total"] == 200 and "dvc add" in out["dvc"]
    target = project / "data" / "raw" / NAME
    samples = pd.read_parquet(target / "samples.parquet")
    new = samples[samples["sample_id"].str.startswith("b-")]
    assert new["split"].value_counts().to_dict() == {"train": 70, "val": 15, "test": 15}  # params' fractions
    frames = np.load(target / "frames.npy")
    assert np.array_equal(frames[:100], old_frames) and np.array_equal(frames[100:], np.load(batch / "frames.npy"))
    series = pd.read_parquet(target / "series.parquet")
    assert len(series) == 200 * 32 and set(series["sample_id"]) == set(samples["sample_id"])
    after = yaml.safe_load((project / "data" / "raw" / f"{NAME}.dvc").read_text())["outs"][0]["md5"]
    assert after != before


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        ("ids", "sample_id"),
        ("channels", "series.channels"),
        ("builtin", "generated from params.yaml"),
    ],
)
def test_a_batch_that_cannot_join_is_refused_and_nothing_changes(project, tmp_path, spoil, says):
    batch = write(tmp_path / "batch", 2, "" if spoil == "ids" else "b-", split=False)
    dataset = NAME
    if spoil == "channels":
        spec = yaml.safe_load((batch / "dataset.yaml").read_text())
        spec["series"]["channels"][0]["name"] = "zone-x"
        spec["sensors"]["zone-x"] = spec["sensors"].pop("zone-0")
        (batch / "dataset.yaml").write_text(yaml.safe_dump(spec))
    if spoil == "builtin":
        dataset = "moving-digits"
        shutil.copytree(project / "data" / "raw" / NAME, project / "data" / "raw" / dataset)
    before = dir_md5(project / "data" / "raw" / dataset)
    with pytest.raises(DataValidationError, match=says):
        append(Params(), Paths(project), batch, dataset)
    assert dir_md5(project / "data" / "raw" / dataset) == before


def test_two_appends_at_once_both_land(project, tmp_path):
    """Two `stfn ingest --append` processes started together: the dataset's lock makes them take
    turns, so both batches are kept (without it, the later writer rewrote the old version plus its
    own batch only, or failed reading the dataset mid-rewrite)."""
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": NAME}}))
    batches = [write(tmp_path / f"batch-{k}", 10 + k, f"b{k}-", split=False) for k in range(2)]
    stfn = str(Path(sys.executable).with_name("stfn"))
    run = [stfn, "ingest", "--append", NAME]
    procs = [
        subprocess.Popen(
            [*run[:2], str(b), *run[2:]], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for b in batches
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    samples = pd.read_parquet(project / "data" / "raw" / NAME / "samples.parquet")
    assert len(samples) == 300 and samples["sample_id"].is_unique
    assert {s[:3] for s in samples["sample_id"] if s.startswith("b")} == {"b0-", "b1-"}
    assert len(np.load(project / "data" / "raw" / NAME / "frames.npy")) == 300


def test_the_append_name_is_a_dataset_name_never_a_path(project, tmp_path):
    batch = write(tmp_path / "batch", 2, "b-", split=False)
    outside = tmp_path / "elsewhere"
    shutil.copytree(project / "data" / "raw" / NAME, outside)
    before = dir_md5(outside)
    with pytest.raises(DataValidationError, match="a dataset name under data/raw/"):
        append(Params(), Paths(project), batch, str(outside))
    assert dir_md5(outside) == before
