"""`stfn tune --workers 2` on the team servers (MLflow and Prefect on PostgreSQL) with the study
in a PostgreSQL database of its own: `stfn deploy` puts `tune/trials` on a process pool, two real
Prefect workers pull the two flow runs, and one worker's whole process tree is killed (SIGKILL) in
the middle of a trial. The study still completes its trials; the killed trial is failed by the
heartbeat and run again once (its MLflow run marked KILLED); every trial is in Optuna and in
MLflow, none is left running, none ran twice but the retried one; the MLflow UI's chart view
compares them (a screenshot, to docs/screenshots/ with STFN_SCREENSHOTS=docs/screenshots)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from browserlib import check_tuning_chart, ensure_chromium
from teamlib import BIN
from test_deploy import _copy_project

POOL = "stfn-tune-t"
SPACE = {"train.lr": {"low": 0.001, "high": 0.01, "log": True}, "model.dim": {"choices": [8, 16]}}


def _worker(root: Path, env: dict, name: str) -> subprocess.Popen:
    """A Prefect process worker of the pool that runs one flow run at a time (one worker, one trial)."""
    log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - the worker's own log, closed with the test
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _kill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL to the worker and every process under it (its flow runs), as a lost host would."""
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in tree:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return tree


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.thorough
def test_two_workers_finish_a_study_when_one_is_killed_mid_trial(tmp_path, team_servers, pg_databases,
                                                                 write_tiny_params, need):  # fmt: skip
    import optuna

    from mlflow import MlflowClient

    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    storage = f"postgresql://postgres@127.0.0.1:5432/{pg_databases[0]}"
    client_env = team_servers["client_env"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **client_env,
           "MLFLOW_REGISTRY_URI": client_env["MLFLOW_TRACKING_URI"], "STFN_TUNE_STORAGE": storage}  # fmt: skip
    write_tiny_params(
        tmp_path / "params.yaml",
        **{"data.dataset": "moving-digits", "train.epochs": 6, "tune.space": SPACE, "tune.sampler": "random",
           "tune.startup_trials": 1, "tune.work_pool": POOL, "retrain.work_pool": POOL,
           "tune.heartbeat_seconds": 1, "tune.grace_seconds": 4},
    )  # fmt: skip
    _copy_project(tmp_path)
    deployed = subprocess.run([str(BIN / "stfn"), "deploy", "--no-worker"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert deployed.returncode == 0 and "tune/trials" in deployed.stdout, deployed.stdout + deployed.stderr
    workers = [_worker(tmp_path, env, "w1"), _worker(tmp_path, env, "w2")]
    tune = subprocess.Popen([str(BIN / "stfn"), "tune", "--workers", "2", "--trials", "8"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    shared = optuna.storages.RDBStorage(storage.replace("://", "+psycopg2://", 1))  # one pool for every look
    study = lambda: optuna.load_study(study_name="moving-digits", storage=shared)  # noqa: E731
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:  # both workers in a trial, one done already
            time.sleep(0.2)
            try:
                trials = study().trials
            except KeyError:
                continue
            states = [t.state.name for t in trials]
            if states.count("RUNNING") == 2 and states.count("COMPLETE") + states.count("PRUNED") >= 1:
                killed = _kill_tree(workers[0])
        assert killed, "never saw both workers in a trial"
        out, err = tune.communicate(timeout=600)
    finally:
        for w in workers:
            if w.poll() is None:
                _kill_tree(w)
        if tune.poll() is None:
            tune.kill()
    assert tune.returncode == 0, out[-3000:] + err[-3000:]
    trials = study().trials
    by_state = {
        s: [t for t in trials if t.state.name == s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
    }
    assert len(by_state["COMPLETE"]) + len(by_state["PRUNED"]) >= 8 and not by_state["RUNNING"]
    assert len(by_state["FAIL"]) == 1  # the trial of the killed worker, failed by the heartbeat
    lost = by_state["FAIL"][0]
    original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in trials if original(t) == lost.number]
    # the same point again, once: run by a worker still going, or queued for the study's next call
    # when the others had finished the study before the lost trial's heartbeat went stale
    assert len(retried) == 1 and retried[0].state.name in ("COMPLETE", "PRUNED", "WAITING")
    assert retried[0].params == lost.params
    # MLflow: a run for every trial, under the study's parent; the lost one KILLED, none left running
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    parent = study().user_attrs["mlflow_parent_run_id"]
    for t in trials:
        if t.state.name == "WAITING" or (t.number == lost.number and "mlflow_run_id" not in t.user_attrs):
            continue  # not started yet; or killed before its run began
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == ("KILLED" if t.number == lost.number else "FINISHED")
    assert "tune/trials" in deployed.stdout and "8 in the study" not in out  # 9 or more: the retried one too
    section = yaml.safe_load((tmp_path / "params.yaml").read_text())["datasets"]["moving-digits"]
    assert section["train"]["lr"] == pytest.approx(study().best_params["train.lr"])
    # what a user compares them in: the MLflow UI's chart view of the tuning experiment
    ensure_chromium(need)
    shots = Path(os.environ["STFN_SCREENSHOTS"]).resolve() if os.environ.get("STFN_SCREENSHOTS") else tmp_path
    experiment = client.get_experiment_by_name("moving-digits-tuning").experiment_id
    check_tuning_chart(f"http://127.0.0.1:{team_servers['mlflow_port']}", experiment, "moving-digits", shots)
