"""The `stfn` command as a user runs it (subprocesses in temp project folders)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STFN = str(Path(sys.executable).with_name("stfn"))
DVC = str(Path(sys.executable).with_name("dvc"))


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_help_lists_every_command(project):
    out = run(project, STFN, "--help").stdout
    for cmd in ("run", "validate", "ingest", "models", "stage"):
        assert cmd in out


def test_typo_in_override_is_a_readable_error(project):
    proc = run(project, STFN, "run", "--set", "train.epohcs=3")
    assert proc.returncode == 2
    assert "train.epohcs: unknown key" in proc.stderr and "Traceback" not in proc.stderr


def test_ingest_copies_validates_and_tracks_with_dvc(project, tiny_dataset):
    src = project / "incoming"
    shutil.copytree(tiny_dataset, src)
    spec = yaml.safe_load((src / "dataset.yaml").read_text())
    spec["name"] = "my-digits"
    (src / "dataset.yaml").write_text(yaml.safe_dump(spec))
    assert run(project, "git", "init", "-q").returncode == 0
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    assert run(project, DVC, "init", "-q").returncode == 0
    proc = run(project, STFN, "ingest", str(src))
    assert proc.returncode == 0, proc.stderr
    target = project / "data" / "raw" / "my-digits"
    assert sorted(p.name for p in target.iterdir()) == [
        "dataset.yaml",
        "frames.npy",
        "samples.parquet",
        "series.parquet",
    ]
    assert (project / "data" / "raw" / "my-digits.dvc").is_file()
    assert "stfn run --dataset my-digits" in proc.stdout
    again = run(project, STFN, "ingest", str(src))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_ingest_refuses_invalid_data_and_writes_nothing(project, tiny_dataset):
    src = project / "incoming"
    shutil.copytree(tiny_dataset, src)
    (src / "frames.npy").write_bytes((src / "frames.npy").read_bytes()[:1000])
    proc = run(project, STFN, "ingest", str(src))
    assert proc.returncode == 2 and "frames.npy" in proc.stderr and "truncated" in proc.stderr
    assert not (project / "data" / "raw").exists()
