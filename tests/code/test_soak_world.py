"""The soak's world (soak/world.py): the same seed plans the same year, each fault falls once,
and its batches are what they claim to be: clean ones pass the dataset's validation (real GX),
each corrupt one is refused naming its file, each drift moves what it says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soak import world
from stfn.errors import DataValidationError
from stfn.validation import validate_dataset


def test_the_same_seed_plans_the_same_year_and_every_fault_falls_once():
    a, b, other = world.plan(5, 52), world.plan(5, 52), world.plan(6, 52)
    assert [w.row() for w in a] == [w.row() for w in b]
    assert [w.row() for w in a] != [w.row() for w in other]
    for year in (a, other, world.plan(7, 3)):
        placed = [f for w in year for f in w.faults]
        assert sorted(placed) == sorted(world.FAULTS)  # each once
        retrains = {w.week for w in year if w.scheduled_retrain or w.kind == "drifted"}
        for w in year:  # the kills of a retrain fall on a week that retrains; the append's on a clean week
            if {"kill training", "kill promotion", "kill mlflow"} & set(w.faults):
                assert w.week in retrains
            if "kill append" in w.faults:
                assert w.kind == "clean"
        assert year[0].kind == "clean" and year[-1].scheduled_retrain
        assert sum(w.rollback for w in year) == 1
    kinds = [w.kind for w in a]
    assert kinds.count("drifted") == 6 and kinds.count("corrupt") == 4
    assert {w.detail for w in a if w.kind == "drifted"} == set(world.DRIFTS)
    without = world.plan(5, 52, skip=frozenset({"kill mlflow"}))
    assert [w.kind for w in without] == kinds and not any("kill mlflow" in w.faults for w in without)


def test_clean_batches_pass_validation_and_corrupt_ones_are_refused_naming_the_file(tmp_path):
    clean = world.batch(tmp_path / "clean", 5, world.Week(3, "clean"), 60, offset_std=1.0)
    validate_dataset(clean, batch=True)
    samples = pd.read_parquet(clean / "samples.parquet")
    assert len(samples) == 60 and samples["sample_id"].str.startswith("w03-").all() and "split" not in samples
    again = world.batch(tmp_path / "again", 5, world.Week(3, "clean"), 60, offset_std=1.0)
    assert np.array_equal(np.load(again / "frames.npy"), np.load(clean / "frames.npy"))  # replayed
    other = world.batch(tmp_path / "other", 5, world.Week(4, "clean"), 60, offset_std=1.0)
    assert not np.array_equal(np.load(other / "frames.npy"), np.load(clean / "frames.npy"))  # a new week, new videos
    files = {"infinite reading": "series.parquet", "duplicate sample_id": "samples.parquet",
             "string step": "series.parquet", "frames out of range": "frames.npy"}  # fmt: skip
    assert set(files) == set(world.CORRUPTIONS)
    for kind, file in files.items():
        bad = world.batch(tmp_path / kind.replace(" ", "-"), 5, world.Week(3, "corrupt", kind), 60, offset_std=1.0)
        with pytest.raises(DataValidationError) as err:
            validate_dataset(bad, batch=True)
        assert file in str(err.value), (kind, str(err.value))


def test_each_drift_moves_what_it_names():
    rng = np.random.default_rng(0)
    series = pd.DataFrame({"sample_id": ["a"] * 4, "step": range(4), "zone-0": [1.0, 2.0, 3.0, 4.0],
                           "zone-1": [1.0] * 4})  # fmt: skip
    frames = np.full((1, 1, 1, 2, 2), 100, np.uint8)
    gain, _ = world.drift("gain", series, frames, 2.0, rng)
    offset, _ = world.drift("offset", series, frames, 2.0, rng)
    _, darker = world.drift("darker", series, frames, 2.0, rng)
    assert gain["zone-0"].tolist() == [1.5, 3.0, 4.5, 6.0] and offset["zone-0"].tolist() == [3.0, 4.0, 5.0, 6.0]
    assert darker.max() == 70 and (gain["zone-1"] == 1.0).all()
    big = pd.DataFrame({"zone-0": np.ones(10_000)})
    missing, _ = world.drift("missing", big, frames, 2.0, rng)
    assert 0.13 < missing["zone-0"].isna().mean() < 0.17
