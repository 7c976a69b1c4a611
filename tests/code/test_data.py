import numpy as np
import pandas as pd
import pytest

from stfn.config import MovingDigitsParams
from stfn.data.contract import (
    DatasetSpec,
    assign_split,
    load_spec,
    open_frames,
    read_parquet,
    series_array,
    write_dataset,
)
from stfn.data.moving_digits import frame_steps, make_moving_digits
from stfn.errors import DataValidationError

SMALL = MovingDigitsParams(n_train=64, n_val=16, n_test=16, seed=11)


def test_frame_steps_match_the_contract():
    assert frame_steps(32, 8) == [3, 7, 11, 15, 19, 23, 27, 31]


def test_generator_is_deterministic_from_its_seed():
    a, b = make_moving_digits(SMALL), make_moving_digits(SMALL)
    pd.testing.assert_frame_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3], b[3])
    c = make_moving_digits(SMALL.model_copy(update={"seed": 12}))
    assert not np.array_equal(a[3], c[3])


def test_generator_task_structure():
    spec, samples, series, frames = make_moving_digits(SMALL)
    assert frames.shape == (96, 8, 1, 32, 32) and frames.dtype == np.uint8
    assert list(samples["split"].value_counts().sort_index()) == [16, 64, 16]  # test, train, val
    arr = series_array(series, samples["sample_id"], spec)  # (N, T, C)
    centred = arr - np.nanmedian(arr, axis=1, keepdims=True)
    n = len(samples)
    for i in range(n):
        step, zone = samples.loc[i, "trigger_step"], samples.loc[i, "trigger_zone"]
        assert step == spec.frames.steps[samples.loc[i, "trigger_frame"]]
        # the spike is the largest deviation of the whole sample
        assert np.unravel_index(np.nanargmax(centred[i]), centred[i].shape) == (step, zone)
        # the trigger digit's pixels are in its zone at the trigger frame
        r, c = samples.loc[i, "trigger_row"], samples.loc[i, "trigger_col"]
        assert (r + 4 >= 16) * 2 + (c + 4 >= 16) == zone
        assert frames[i, samples.loc[i, "trigger_frame"], 0, r : r + 8, c : c + 8].max() > 0
        # the label is one of the digits in the video
        assert str(samples.loc[i, "label"]) in samples.loc[i, "digits"].split()


def test_contract_round_trip(tmp_path):
    spec, samples, series, frames = make_moving_digits(SMALL)
    folder = write_dataset(tmp_path / "moving-digits", spec, samples, series, frames)
    assert sorted(p.name for p in folder.iterdir()) == [
        "dataset.yaml",
        "frames.npy",
        "samples.parquet",
        "series.parquet",
    ]
    spec2 = load_spec(folder)
    assert spec2 == spec
    pd.testing.assert_frame_equal(read_parquet(folder, "samples.parquet", spec.name), samples)
    np.testing.assert_array_equal(open_frames(folder, spec2, len(samples)), frames)
    np.testing.assert_array_equal(
        series_array(read_parquet(folder, "series.parquet", spec.name), samples["sample_id"], spec2),
        series_array(series, samples["sample_id"], spec),
    )


def test_spec_rejects_future_frame_steps_and_bad_names():
    spec, *_ = make_moving_digits(SMALL)
    raw = spec.model_dump(mode="json")
    bad = {**raw, "frames": {**raw["frames"], "steps": [3, 7, 11, 15, 19, 23, 27, 32]}}
    with pytest.raises(ValueError, match="frames.steps"):
        DatasetSpec.model_validate(bad)
    with pytest.raises(ValueError, match="name"):
        DatasetSpec.model_validate({**raw, "name": "../etc"})


def test_missing_file_is_a_contract_error(tmp_path):
    spec, samples, series, frames = make_moving_digits(SMALL)
    folder = write_dataset(tmp_path / "ds", spec, samples, series, frames)
    (folder / "series.parquet").unlink()
    with pytest.raises(DataValidationError, match="series.parquet"):
        load_spec(folder)


def test_split_is_seeded_and_stratified_when_absent():
    spec, samples, *_ = make_moving_digits(MovingDigitsParams(n_train=300, n_val=10, n_test=10, seed=1))
    plain = samples.drop(columns=["split"])
    a, how = assign_split(plain, spec, 0.2, 0.2, seed=0)
    b, _ = assign_split(plain, spec, 0.2, 0.2, seed=0)
    assert (a == b).all() and "stratified" in how
    assert abs((a == "test").mean() - 0.2) < 0.01
    labels = plain["label"].to_numpy()
    share_all = np.bincount(labels, minlength=10) / len(labels)
    share_test = np.bincount(labels[a == "test"], minlength=10) / (a == "test").sum()
    assert np.abs(share_all - share_test).max() < 0.03


def test_split_by_time_when_timestamps_exist():
    spec, samples, *_ = make_moving_digits(SMALL)
    plain = samples.drop(columns=["split"]).assign(timestamp=pd.date_range("2020-01-01", periods=len(samples)))
    split, how = assign_split(plain, spec, 0.25, 0.25, seed=0)
    assert "time" in how
    ts = plain["timestamp"].to_numpy()
    assert ts[split == "train"].max() < ts[split == "val"].min() <= ts[split == "val"].max() < ts[split == "test"].min()


def test_series_normalisation_median_removes_each_samples_offset_global_keeps_the_level():
    from stfn.features import fit_stats, transform_series

    spec = make_moving_digits(MovingDigitsParams(n_train=8, n_val=4, n_test=4))[0]
    rng = np.random.default_rng(0)
    series = rng.normal(size=(20, spec.series.steps, 4)).astype(np.float32)
    series[:10] += 5.0  # half the samples sit at a higher level
    frames = np.zeros((20, *spec.frames.shape), np.uint8)
    train = np.ones(20, bool)
    med = transform_series(series, fit_stats(spec, series, frames, np.zeros(20), train, "median"))
    glob = transform_series(series, fit_stats(spec, series, frames, np.zeros(20), train, "global"))
    assert abs(med[:10].mean() - med[10:].mean()) < 0.2  # level removed per sample
    assert glob[:10].mean() - glob[10:].mean() > 1.5  # level kept: higher samples stay higher
    assert abs(glob.mean()) < 1e-4  # centred on the training mean
    with pytest.raises(ValueError, match="series_norm"):
        fit_stats(spec, series, frames, np.zeros(20), train, "minmax")


def test_target_channel_must_be_a_series_channel():
    spec = make_moving_digits(MovingDigitsParams(n_train=8, n_val=4, n_test=4))[0].model_dump()
    spec.update(task="regression", target={"name": "x", "unit": "m", "channel": "nope"})
    with pytest.raises(Exception, match="target.channel"):
        DatasetSpec.model_validate(spec)


def test_npy_rows_stream_what_np_load_reads(tmp_path):
    from stfn.data.contract import NpyRows, write_npy_chunks

    arr = np.random.default_rng(0).normal(size=(50, 2, 3)).astype(np.float32)
    write_npy_chunks(tmp_path / "a.npy", arr.shape, np.float32, (arr[i : i + 7] for i in range(0, 50, 7)))
    assert np.array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), arr)  # a valid .npy file
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 50 and np.array_equal(rows[10:20], arr[10:20]) and np.array_equal(rows[45:99], arr[45:])
    picks = np.array([3, 9, 4, 30])
    assert np.array_equal(rows[picks], arr[picks])
