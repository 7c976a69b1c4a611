"""Resume after a crash: a training run killed with SIGKILL in the middle of an epoch, then run
again with the same configuration, continues from its last checkpoint and ends with exactly the
weights and metrics of an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TRAINER = """
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from stfn.config import ModelParams, TrainParams
from stfn.features import load_features
from stfn.training import fit
features, out, stop_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
seen = 0
def on_batch(b, n):  # after `stop_at` batches in all: say so and wait to be killed
    global seen
    seen += 1
    if seen == stop_at:
        (out / "killme").write_text("now")
        time.sleep(120)
epochs = []
r = fit(load_features(features), ModelParams(dim=16, attention_hidden=16, dropout=0.2),
        TrainParams(epochs=4, batch_size=32, patience=4, num_threads=1), 7, out,
        on_epoch=lambda row: epochs.append(row["epoch"]), on_batch=on_batch)
print(json.dumps({"resumed_from": r.resumed_from_epoch, "epochs_seen": epochs, "best_epoch": r.best_epoch,
                  "history": r.history}))
"""


def _train(features: Path, out: Path, stop_at: int = 0) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(features), str(out), str(stop_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _done(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def features(tiny_dataset, tmp_path_factory) -> Path:
    from stfn.features import build_features

    return build_features(tiny_dataset, tmp_path_factory.mktemp("resume") / "features", 0.2, 0.2, 3)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(features, tmp_path):
    straight = _train(features, tmp_path / "straight")
    killed = _train(features, tmp_path / "killed", stop_at=12)  # 4 batches an epoch: mid epoch 3
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "killme").exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.stderr.read()[-3000:]
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    last = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["finished"] is False  # epochs 1-2 checkpointed, epoch 3 lost
    assert not list((tmp_path / "killed").glob(".*.tmp-*"))  # no half-written file left behind

    resumed = _done(_train(features, tmp_path / "killed"))
    reference = _done(straight)
    assert resumed["resumed_from"] == 3 and reference["resumed_from"] == 0
    assert resumed["epochs_seen"] == [1, 2, 3, 4]  # epochs 1-2 replayed to the new run's tracker
    pairs = zip(reference["history"], resumed["history"], strict=True)
    assert all({**a, "samples_per_s": 0} == {**b, "samples_per_s": 0} for a, b in pairs)  # all but the speed
    for name in ("model.pt", "last.pt"):
        a = torch.load(tmp_path / "killed" / name, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "straight" / name, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_finished_or_different_run_starts_over(features, tmp_path):
    from stfn.config import ModelParams, TrainParams
    from stfn.features import load_features
    from stfn.training import fit, resumable, run_key

    fs = load_features(features)
    mp, tp = ModelParams(dim=8, attention_hidden=8), TrainParams(epochs=1, batch_size=64)
    first = fit(fs, mp, tp, 1, tmp_path)
    again = fit(fs, mp, tp, 1, tmp_path)  # finished: a rerun trains anew, not "resumes" nothing
    assert first.resumed_from_epoch == again.resumed_from_epoch == 0
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["finished"] is True and resumable(tmp_path / "last.pt", last["run_key"]) is None
    from stfn.training import model_config

    cfg = model_config(fs, mp)
    assert run_key(cfg, tp, 1, fs) != run_key(cfg, tp, 2, fs)  # another seed is another run
    assert run_key(cfg, tp, 1, fs) == run_key(cfg, tp.model_copy(update={"device": "cpu"}), 1, fs)
