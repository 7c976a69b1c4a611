"""The pieces of `stfn serve` that need no server: the inference log (rows, files, rotation), the
input checks of a served model, and the error bodies cleaned of MLflow's input echo and stack trace."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from stfn.endpoint import InferenceLog, Summary, _clean
from stfn.inference import InputError, Predictor

META = {
    "task": "classification",
    "spec": {
        "series": {"steps": 6, "channels": [{"name": "a"}, {"name": "b"}]},
        "frames": {"count": 2, "channels": 1, "height": 4, "width": 4, "dtype": "uint8", "steps": [2, 5]},
        "target": {"name": "digit", "classes": ["x", "y", "z"]},
    },
}


def inputs(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    series = rng.normal(size=(n, 6, 2)).astype(np.float32)
    frames = rng.integers(0, 256, size=(n, 2, 1, 4, 4), dtype=np.uint8)
    return series, frames


def test_a_summary_is_a_row_per_sample_with_the_input_summary_and_the_prediction():
    p = Predictor(None, META)
    series, frames = inputs()
    series[0, :3, 1] = np.nan  # 3 of 12 readings missing
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32)
    t = Summary.of(p, series, frames, probs, request_id="r1", model="stfn-x", version=4).table()
    assert list(t["row"]) == [0, 1, 2] and set(t["version"]) == {4} and set(t["request_id"]) == {"r1"}
    assert t["series_missing"].tolist() == pytest.approx([0.25, 0.0, 0.0])
    assert t["series_mean_b"].iloc[0] == pytest.approx(np.nanmean(series[0, :, 1]))
    assert t["frames_mean_0"].tolist() == pytest.approx(frames.mean(axis=(1, 2, 3, 4)).tolist())
    assert t["prediction"].tolist() == [1, 0, 2] and t["predicted_class"].tolist() == ["y", "x", "z"]
    assert t["prob_z"].tolist() == pytest.approx([0.1, 0.25, 0.8])
    assert str(t["time"].dtype) == "datetime64[us, UTC]"


def test_the_log_writes_a_file_per_flush_reads_back_as_one_table_and_deletes_old_files(tmp_path):
    p = Predictor(None, META)
    log = InferenceLog(tmp_path / "log", flush_seconds=3600, keep_days=1)
    assert log.flush() is None and InferenceLog.read(tmp_path / "log").empty  # nothing to write
    series, frames = inputs(2)
    probs = np.full((2, 3), 1 / 3, np.float32)
    log.append(Summary.of(p, series, frames, probs, request_id="a", model="m", version=1))
    first = log.flush()
    log.append(Summary.of(p, series[:1], frames[:1], probs[:1], request_id="b", model="m", version=2))
    second = log.flush()
    assert first != second and first.is_file() and second.is_file()
    table = InferenceLog.read(tmp_path / "log")
    assert table["request_id"].tolist() == ["a", "a", "b"] and table["version"].tolist() == [1, 1, 2]
    old = time.time() - 2 * 86400  # two days old: past keep_days
    os.utime(first, (old, old))
    log.append(Summary.of(p, series, frames, probs, request_id="c", model="m", version=2))
    log.close()  # the last rows are written on close, and the rotation runs
    assert not first.exists() and second.exists()
    assert InferenceLog.read(tmp_path / "log")["request_id"].tolist() == ["b", "c", "c"]
    assert not list((tmp_path / "log").glob(".*"))  # no temp file left behind


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda s, f: {"series": s}, "'frames' is missing: expected (N, 2, 1, 4, 4) uint8"),
        (lambda s, f: {"series": s[:, :5], "frames": f}, "'series' has shape (3, 5, 2): expected (N, 6, 2)"),
        (lambda s, f: {"series": s, "frames": f[:, :1]}, "'frames' has shape (3, 1, 1, 4, 4)"),
        (lambda s, f: {"series": s, "frames": f[:2]}, "'series' has 3 samples and 'frames' 2"),
        (lambda s, f: {"series": s, "frames": f.astype(np.float32) * 2}, "values range 0..498: expected"),
        (lambda s, f: {"series": s, "frames": f - 0.5}, "expected (N, 2, 1, 4, 4) uint8 frames with values 0..255"),
        (lambda s, f: {"series": np.where(s > 1, np.inf, s), "frames": f}, "'series' holds an infinite reading"),
        (lambda s, f: {"series": s.tolist(), "frames": [[["x"]]]}, "'frames' has dtype <U1"),
        (lambda s, f: [s, f], "expected named inputs 'series'"),
    ],
)
def test_the_checks_of_a_served_model_name_the_input_and_what_was_expected(change, phrase):
    series, frames = inputs()
    with pytest.raises(InputError) as err:
        Predictor(None, META).check(change(series, frames))
    assert phrase in str(err.value)


def test_missing_readings_pass_the_checks_and_stay_nan():
    series, frames = inputs()
    series[1, 2, 0] = np.nan
    s, f = Predictor(None, META).check({"series": series.tolist(), "frames": frames})
    assert np.isnan(s[1, 2, 0]) and f.dtype == np.uint8


def test_error_bodies_lose_the_echo_of_the_input_and_the_stack_trace():
    raw = json.dumps(
        {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": "Failed to predict data '{'series': array([[...]])}'. \nError: 'frames' is missing: expected x",
            "stack_trace": "Traceback (most recent call last):\n  ...\nValueError: boom",
        }
    ).encode()
    body = _clean(raw, "JSON with series and frames")
    assert body == {"error_code": "INVALID_PARAMETER_VALUE", "message": "'frames' is missing: expected x"}
    long = _clean(json.dumps({"message": "Invalid input. " + "x" * 5000}).encode(), "the inputs")
    assert len(long["message"]) < 700 and long["message"].endswith("(expected the inputs)")
    assert _clean(b"plain text", "")["message"] == "plain text"
