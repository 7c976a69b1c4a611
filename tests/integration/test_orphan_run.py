"""`stfn run` killed with SIGKILL (its whole process group) during training, then run again: the
rerun resumes from the last epoch's checkpoint, and the killed attempt's MLflow run, which nobody
could end, is marked KILLED and linked both ways with the run that carried on. The outputs land
with the modes the umask gives (0644 files, 0755 folders under umask 022)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow import MlflowClient

STFN = str(Path(sys.executable).with_name("stfn"))


def _stfn_run(project: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [STFN, "run"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed whole
        preexec_fn=lambda: os.umask(0o022),
    )


@pytest.mark.slow
def test_killed_run_is_marked_killed_and_linked_to_the_run_that_carried_on(tmp_path, write_tiny_params, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    # enough work per epoch (~1-2 s) that the kill lands inside training, after epoch 1
    write_tiny_params(
        project / "params.yaml",
        **{"prepare.moving_digits.n_train": 800, "train.epochs": 4, "train.patience": 4, "train.num_threads": 1},
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    client = MlflowClient(tracking_uri=store)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the run that carries on, in this process, too
        monkeypatch.setenv(key, store)

    first = _stfn_run(project, env)
    deadline, killed_run = time.monotonic() + 300, None
    while killed_run is None:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        exp = client.get_experiment_by_name("moving-digits") if (tmp_path / "mlflow.db").exists() else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_accuracy"):
            killed_run = runs[0].info.run_id  # epoch 1 is checkpointed and logged: kill during epoch 2
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert client.get_run(killed_run).info.status == "RUNNING"  # nobody could end it

    # the run that carries on, in this process (the flow `stfn run` runs; a second process start, ~10 s,
    # would add nothing the killed one did not show), with the same umask as the killed one
    import mlflow
    from flows.training_pipeline import training_pipeline

    uris, umask = (mlflow.get_tracking_uri(), mlflow.get_registry_uri()), os.umask(0o022)
    try:
        training_pipeline(root=str(project))
    finally:  # leave this process's MLflow as the next test expects it
        os.umask(umask)
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    assert len(runs) == 2
    (carried_on,) = set(runs) - {killed_run}
    killed, new = runs[killed_run], runs[carried_on]
    assert killed.info.status == "KILLED" and new.info.status == "FINISHED"
    assert killed.data.tags["stfn.continued_by_run"] == carried_on
    assert new.data.tags["stfn.resumed_from_run"] == killed_run
    assert int(new.data.tags["resumed_from_epoch"]) >= 2  # resumed, did not start over

    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    outputs = [
        project / "models/moving-digits/model.pt",
        project / "models/moving-digits/last.pt",
        project / "reports/metrics.json",
        project / "reports/validation/moving-digits.json",
        *sorted((project / "data/features/moving-digits").iterdir()),
        *sorted((project / "data/raw/moving-digits").iterdir()),
    ]
    assert {str(p.relative_to(project)): oct(mode(p)) for p in outputs} == {
        str(p.relative_to(project)): oct(0o644) for p in outputs
    }
    for folder in ("data/features/moving-digits", "data/raw/moving-digits", "models/moving-digits", "reports"):
        assert mode(project / folder) == 0o755, folder


@pytest.mark.slow
@pytest.mark.thorough  # make test-all: two pipeline runs a step; make test kills one during training (above)
@pytest.mark.parametrize(
    ("step", "done_file"),
    [
        ("evaluation", "models/moving-digits/history.json"),  # training has ended: evaluation is under way
        ("registration", "reports/metrics.json"),  # evaluation has ended: registration is under way
    ],
)
def test_a_run_killed_after_training_is_marked_killed_by_the_run_that_carries_on(
    step, done_file, tmp_path, write_tiny_params, monkeypatch
):
    """Killed where no checkpoint resumes it (training had finished): the rerun trains anew, and
    still ends the killed attempt's run as KILLED and links the two, from the owner tags (this
    host, a pid that no longer exists)."""
    project = tmp_path / "project"
    project.mkdir()
    write_tiny_params(project / "params.yaml")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    client = MlflowClient(tracking_uri=store)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(key, store)
    first = _stfn_run(project, env)
    deadline = time.monotonic() + 300
    while not (project / done_file).is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    exp = client.get_experiment_by_name("moving-digits")
    (killed_run,) = [r.info.run_id for r in client.search_runs([exp.experiment_id])]
    assert client.get_run(killed_run).info.status == "RUNNING", f"the run ended before the kill during {step}"

    import mlflow
    from flows.training_pipeline import training_pipeline

    uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        training_pipeline(root=str(project))
    finally:
        mlflow.set_tracking_uri(uris[0])
        mlflow.set_registry_uri(uris[1])
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    (carried_on,) = set(runs) - {killed_run}
    killed, new = runs[killed_run], runs[carried_on]
    assert killed.info.status == "KILLED" and new.info.status == "FINISHED"
    assert killed.data.tags["stfn.continued_by_run"] == carried_on
    assert new.data.tags["stfn.after_killed_runs"] == killed_run
