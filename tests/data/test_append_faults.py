"""An append lands whole or not at all (stfn.stages.ingest, stfn.data.lock), in a real git + DVC
repo with a local remote: `python -m stfn ingest BATCH --append NAME` killed with SIGKILL at each
of its steps (the STFN_FAULT_APPEND test hook), or refused by `dvc push`, leaves the previous
version (the folder and its `.dvc` file, as DVC sees them); the next reader or writer undoes what
the killed one left, and the same append run again lands. A run's read during an append sees the
version before it or the one after it, whole."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_append import NAME, write  # tests/data/test_append.py: the dataset and its batches

from stfn.config import Params, Paths
from stfn.data import contract, lock
from stfn.fileio import dir_md5
from stfn.stages.ingest import FAULT_ENV
from stfn.stages.prepare import prepare, refresh_data

BIN = Path(sys.executable).parent
RAW = Path("data") / "raw"


def sh(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command in `cwd` with this environment's executables first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project (git, `dvc init`) holding dataset NAME (100 samples) added and pushed to a local
    remote beside it (`../remote`, relative, so that a copy of both folders keeps working)."""
    top = tmp_path_factory.mktemp("append-faults")
    project = top / "project"
    write(project / RAW / NAME, 1, "")
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"dataset": NAME}}))
    ok(sh(project, "git", "init", "-q"))
    ok(sh(project, str(BIN / "dvc"), "init", "-q"))
    ok(sh(project, str(BIN / "dvc"), "remote", "add", "-d", "local", "../remote"))
    ok(sh(project, str(BIN / "dvc"), "add", "-q", str(RAW / NAME)))
    ok(sh(project, str(BIN / "dvc"), "push", "-q"))
    write(top / "batch", 2, "b-", split=False)
    return top


@pytest.fixture
def project(base, tmp_path) -> Path:
    for item in ("project", "remote", "batch"):
        shutil.copytree(base / item, tmp_path / item, symlinks=True)
    return tmp_path / "project"


def version(project: Path) -> dict:
    """What a reader of dataset NAME finds: samples, the folder's hash, the `.dvc` file's text."""
    folder = project / RAW / NAME
    return {
        "samples": len(pd.read_parquet(folder / contract.SAMPLES_FILE)),
        "md5": dir_md5(folder),
        "dvc_file": (project / RAW / f"{NAME}.dvc").read_text(),
    }


def append(project: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    batch = project.parent / "batch"
    env = {FAULT_ENV: fault} if fault else {}
    return sh(project, sys.executable, "-m", "stfn", "ingest", str(batch), "--append", NAME, env=env)


def assert_previous_version(project: Path, before: dict) -> None:
    assert version(project) == before
    assert not lock.journal_file(Paths(project), NAME).exists()
    assert not lock.work_dir(Paths(project), NAME).exists()


def assert_appended_again(project: Path, before: dict) -> None:
    """The same append run again lands: no reused ids, 200 samples, recorded and pushed."""
    out = ok(append(project))
    assert "(200 now" in out and "pushed to the DVC remote" in out, out
    after = version(project)
    assert after["samples"] == 200 and after["dvc_file"] != before["dvc_file"]
    assert yaml.safe_load(after["dvc_file"])["outs"][0]["md5"] == after["md5"] + ".dir"  # DVC's hash of it


KILLED_AT = [
    pytest.param("dvc-add", "a run's read", id="dvc-add"),  # folder swapped and .dvc rewritten: both go back
    pytest.param("written", "a run's read", id="written", marks=pytest.mark.thorough),
    pytest.param("swapped", "the retrain's dvc pull", id="swapped", marks=pytest.mark.thorough),
    pytest.param("dvc-push", "the next append", id="dvc-push", marks=pytest.mark.thorough),
]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "undone_by"), KILLED_AT)
def test_an_append_killed_at_a_step_leaves_the_previous_version(project, step, undone_by):
    before = version(project)
    killed = append(project, fault=step)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert lock.journal_file(Paths(project), NAME).is_file()  # what the next holder of the lock undoes
    params = Params.model_validate({"data": {"dataset": NAME}})
    if undone_by != "the next append":  # each under the dataset's lock, which undoes first
        if undone_by == "a run's read":
            prepare(params, Paths(project))
        else:
            assert "dvc pull" in refresh_data(params, Paths(project))
        assert_previous_version(project, before)
        assert "up to date" in ok(sh(project, str(BIN / "dvc"), "status", str(RAW / f"{NAME}.dvc"))).lower()
    assert_appended_again(project, before)  # the next append undoes first when the read did not


@pytest.mark.slow
def test_a_refused_dvc_push_undoes_the_append(project):
    """The remote cannot be written (its path runs through a file: refused even for root)."""
    (project.parent / "remote-file").write_text("not a folder")
    ok(sh(project, str(BIN / "dvc"), "remote", "modify", "local", "url", "../remote-file/remote"))
    before = version(project)
    proc = append(project)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "failed at `dvc push data/raw/append-digits.dvc`" in message and "was undone" in message, message
    assert "hold the previous version (100 samples)" in message and "Traceback" not in proc.stderr
    assert_previous_version(project, before)


@pytest.mark.slow
def test_a_run_reading_during_an_append_sees_one_whole_version(project):
    """A run's read (under the dataset's lock, as prepare, validate and featurize take it) while an
    append runs: the folder is always there and its files agree, at 100 samples or at 200."""
    batch = project.parent / "batch"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stfn", "ingest", str(batch), "--append", NAME],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths, folder, seen = Paths(project), project / RAW / NAME, set()
    while proc.poll() is None:
        time.sleep(0.1)  # a pause between reads, so the appender gets its turn at the lock
        with lock.reading(paths, folder):
            spec = contract.load_spec(folder)
            n = len(contract.read_parquet(folder, contract.SAMPLES_FILE, NAME))
            assert len(contract.open_frames(folder, spec)) == n
            assert len(contract.read_parquet(folder, contract.SERIES_FILE, NAME)) == n * spec.series.steps
            seen.add(n)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert seen <= {100, 200} and len(pd.read_parquet(folder / contract.SAMPLES_FILE)) == 200


def test_the_lock_keeps_other_processes_out_and_lets_its_own_threads_in(tmp_path):
    """A writer in another process waits, then gives up naming the lock; the holder's own stages
    (the training flow's, which may run on another thread) take it again without waiting."""
    paths = Paths(tmp_path)
    other = (
        "import sys; from pathlib import Path; from stfn.config import Paths; from stfn.data import lock\n"
        "with lock.held(Paths(Path(sys.argv[1])), sys.argv[2], timeout=0.5): pass"
    )

    def nested() -> str:
        with lock.held(paths, NAME, timeout=0):
            return "held"

    with lock.held(paths, NAME), ThreadPoolExecutor(1) as pool:
        assert pool.submit(nested).result(timeout=10) == "held"
        proc = sh(tmp_path, sys.executable, "-c", other, str(tmp_path), NAME)
    assert proc.returncode == 1 and "another writer or run holds it" in proc.stderr, proc.stderr
    assert f".stfn/locks/{NAME}.lock within 0.5 s" in proc.stderr
    assert ok(sh(tmp_path, sys.executable, "-c", other, str(tmp_path), NAME)) == ""  # free again
