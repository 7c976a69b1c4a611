"""Faults injected into real pipeline runs: what survives, and that nothing is lost."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from teamlib import BIN, free_port, stfn_cmd


@pytest.mark.slow
def test_the_train_task_retries_into_its_checkpoint(tmp_path, write_tiny_params, monkeypatch):
    """The tracker fails after epoch 2 (its checkpoint is written): Prefect retries the train task,
    which resumes at epoch 3 instead of starting over; the MLflow run keeps the whole curve."""
    from flows.training_pipeline import training_pipeline
    from mlflow import MlflowClient
    from stfn import tracking
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    digits = MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=12)
    write_dataset(tmp_path / "data" / "raw" / "fault-digits", *make_moving_digits(digits, name="fault-digits"))
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": "fault-digits", "train.epochs": 3})
    real, failed = tracking.log_metrics, []

    def flaky(run_id, metrics, step=None):
        if step == 2 and not failed:
            failed.append(step)
            raise ConnectionError("the tracking server went away")
        return real(run_id, metrics, step)

    monkeypatch.setattr(tracking, "log_metrics", flaky)
    result = training_pipeline(root=str(tmp_path))
    assert failed == [2] and result["epochs_run"] == 3
    client = MlflowClient()
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["resumed_from_epoch"] == "3"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")})
    assert steps == [1, 2, 3]  # nothing lost: epochs 1-2 replayed from the checkpoint, 3 trained after


def _mlflow_server(port: int, store: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(store / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    _stop(proc)
    raise AssertionError("mlflow server did not start in 90 s")


def _stop(proc: subprocess.Popen) -> None:
    from stfn.ops.servers import stop_group

    stop_group(proc.pid)
    proc.poll()


@pytest.mark.slow
def test_tracking_calls_ride_out_a_server_restart_and_fail_clearly_when_it_stays_down(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from stfn import registry, tracking

    port, store = free_port(), tmp_path / "store"
    url = f"http://127.0.0.1:{port}"
    for k, v in {"MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 "STFN_UNLOCKED_PROMOTION": "1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri(), tracking._RETRY["seconds"]
    server = _mlflow_server(port, store)
    try:
        tracking.configure(tmp_path / "mlflow", retry_seconds=90)
        run_id = tracking.start_run("faults", tmp_path / "mlflow", "restart", {})
        tracking.log_metrics(run_id, {"loss": 1.0}, step=1)

        _stop(server)  # the server goes away ...
        restarted: list[subprocess.Popen] = []
        back = threading.Timer(4.0, lambda: restarted.append(_mlflow_server(port, store)))
        back.start()  # ... and comes back after 4 s (plus its start-up)
        t0 = time.monotonic()
        tracking.log_metrics(run_id, {"loss": 0.5}, step=2)  # retried until the server answers
        waited = time.monotonic() - t0
        back.join()
        server = restarted[0]
        assert waited >= 4.0
        history = MlflowClient(tracking_uri=url).get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]  # nothing lost

        _stop(server)  # down for good: a clear error after the configured time, not a hang
        tracking.set_retry_seconds(3)
        t0 = time.monotonic()
        with pytest.raises(tracking.TrackingError, match=r"stayed unreachable while logging metrics"):
            tracking.log_metrics(run_id, {"loss": 0.25}, step=3)
        assert time.monotonic() - t0 < 40
        with pytest.raises(tracking.TrackingError, match=r"stayed unreachable while judging the challenger"):
            registry.promote_if_better("stfn-x", "1", "accuracy", 0.9, 0.0)  # never "no champion yet"
    finally:
        _stop(server)
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        tracking.set_retry_seconds(before[2])


@pytest.mark.slow
def test_stfn_run_against_a_dead_tracking_server_exits_with_one_readable_message(tmp_path, write_tiny_params):
    write_tiny_params(tmp_path / "params.yaml", **{"tracking.retry_seconds": 2})
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "STFN_UNLOCKED_PROMOTION": "1"}
    proc = stfn_cmd(tmp_path, env, "run")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stayed unreachable while starting the run" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists()  # stopped before training: nothing trained, nothing registered
