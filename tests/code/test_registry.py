"""The promotion gate against a real MLflow store (SQLite in a temp folder)."""

import os
import uuid
from pathlib import Path

import mlflow.pyfunc
import pytest

import mlflow
from mlflow import MlflowClient
from stfn import registry, tracking
from stfn.gate import is_better


@pytest.mark.parametrize(
    "metric,challenger,champion,margin,expected",
    [
        ("accuracy", 0.91, 0.90, 0.0, True),
        ("accuracy", 0.90, 0.90, 0.0, False),
        ("accuracy", 0.905, 0.90, 0.01, False),
        ("mae", 1.0, 1.2, 0.0, True),
        ("mae", 1.3, 1.2, 0.0, False),
        ("mae", 1.15, 1.2, 0.1, False),
    ],
)
def test_gate_knows_each_metrics_direction(metric, challenger, champion, margin, expected):
    assert is_better(metric, challenger, champion, margin) is expected


def test_unknown_metric_direction_is_an_error():
    with pytest.raises(KeyError, match="no declared direction"):
        is_better("banana", 1, 0)


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _experiment() -> str:
    # artifacts under the tests' temp store, never ./mlruns in the working directory
    return tracking.experiment_id("gate-tests", Path(os.environ["STFN_TEST_STATE"]) / "mlflow")


def _logged_model(client: MlflowClient) -> tuple[str, str]:
    run = client.create_run(_experiment())
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
    return run.info.run_id, info.model_uri


def _version(client: MlflowClient, name: str, metric: str, value: float) -> str:
    run_id, uri = _logged_model(client)
    client.log_metric(run_id, f"test_{metric}", value)
    return registry.register(uri, name, run_id, {f"test_{metric}": value})


def test_promotion_gate_and_tags_on_real_registry():
    mlflow.set_tracking_uri(mlflow.get_tracking_uri())
    client = MlflowClient()
    name = f"stfn-gate-{uuid.uuid4().hex[:8]}"
    v1 = _version(client, name, "mae", 2.0)
    d1 = registry.promote_if_better(name, v1, "mae", 2.0, 0.0)
    assert d1.promoted and d1.reason == "no champion yet"
    again = registry.promote_if_better(name, v1, "mae", 2.0, 0.0)  # a retried promotion task
    assert again.promoted and again.reason == "already champion"
    assert [e["version"] for e in registry.champion_history(name)] == [v1]  # the alias moved once
    v2 = _version(client, name, "mae", 2.5)  # worse (lower is better)
    d2 = registry.promote_if_better(name, v2, "mae", 2.5, 0.0)
    assert not d2.promoted and "does not beat" in d2.reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
    assert client.get_model_version(name, v2).tags["decision"] == "rejected"
    v3 = _version(client, name, "mae", 1.5)
    d3 = registry.promote_if_better(name, v3, "mae", 1.5, 0.1)
    assert d3.promoted and d3.champion_version == v1
    assert str(client.get_model_version_by_alias(name, "champion").version) == v3
    rows = registry.list_versions(name)
    assert [r["version"] for r in rows] == [v3, v2, v1]
    assert rows[0]["aliases"] == ["challenger", "champion"]


def test_manual_promotion_and_rollback_walk_the_recorded_alias_history():
    client = MlflowClient()
    name = f"stfn-roll-{uuid.uuid4().hex[:8]}"
    v1 = _version(client, name, "accuracy", 0.8)
    registry.promote_if_better(name, v1, "accuracy", 0.8, 0.0)
    v2 = _version(client, name, "accuracy", 0.9)
    assert registry.promote_if_better(name, v2, "accuracy", 0.9, 0.0).promoted
    v3 = _version(client, name, "accuracy", 0.7)  # worse: the gate rejects it ...
    assert not registry.promote_if_better(name, v3, "accuracy", 0.7, 0.0).promoted
    assert registry.promote(name, v3, "manual: approved by hand") == v2  # ... a person promotes it anyway
    champion = lambda: str(client.get_model_version_by_alias(name, "champion").version)  # noqa: E731
    assert champion() == v3
    assert registry.rollback(name) == (v3, v2) and champion() == v2
    assert client.get_model_version(name, v3).tags["rolled_back"] == f"champion moved back to v{v2}"
    assert registry.rollback(name) == (v2, v1) and champion() == v1
    with pytest.raises(tracking.TrackingError, match="no earlier champion"):
        registry.rollback(name)
    actions = [(e["action"], e["version"]) for e in registry.champion_history(name)]
    assert actions == [("promote", v1), ("promote", v2), ("promote", v3), ("rollback", v2), ("rollback", v1)]
    with pytest.raises(tracking.TrackingError, match="no version 99"):
        registry.promote(name, "99")


def test_register_twice_for_one_run_makes_one_version():
    client = MlflowClient()
    name = f"stfn-idem-{uuid.uuid4().hex[:8]}"
    run_id, uri = _logged_model(client)
    a = registry.register(uri, name, run_id, {})
    b = registry.register(uri, name, run_id, {})
    assert a == b and len(client.search_model_versions(f"name='{name}'")) == 1


def test_scrub_uri_hides_passwords():
    assert tracking.scrub_uri("postgresql://stfn:s3cret@db:5432/mlflow") == "postgresql://stfn:***@db:5432/mlflow"


def test_calibration_of_perfect_and_overconfident_predictions():
    import numpy as np

    from stfn.evaluation import calibration

    labels = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[labels]
    assert calibration(labels, perfect)["ece"] == 0.0 and calibration(labels, perfect)["brier"] == 0.0
    wrong = np.eye(3)[[1, 2, 0, 1]]  # confident and always wrong
    cal = calibration(labels, wrong)
    assert abs(cal["ece"] - 1.0) < 1e-9 and abs(cal["brier"] - 2.0) < 1e-9


def test_pointing_score_checks_frame_and_cell_overlap():
    import numpy as np

    from stfn.evaluation import pointing_score

    att = np.zeros((2, 3, 4, 4))
    att[0, 1, 2, 3] = 1.0  # frame 1, cell rows 16-23, cols 24-31
    att[1, 0, 0, 0] = 1.0  # frame 0, but the digit is at frame 2
    frame, row, col = np.array([1, 2]), np.array([18, 0]), np.array([20, 0])
    assert pointing_score(att, frame, row, col, (32, 32)) == 0.5


RACER = str(Path(__file__).resolve().parents[1] / "racer.py")  # the promoting process


def test_two_promotions_racing_leave_the_better_one_champion(tmp_path):
    import subprocess
    import sys

    client = MlflowClient()
    name = f"stfn-race-{uuid.uuid4().hex[:8]}"
    v1 = _version(client, name, "accuracy", 0.5)
    registry.promote_if_better(name, v1, "accuracy", 0.5, 0.0)
    v2 = _version(client, name, "accuracy", 0.7)
    v3 = _version(client, name, "accuracy", 0.6)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen([sys.executable, RACER, name, v2, "0.7", "0", str(go)], stdout=subprocess.PIPE, text=True),
        # the worse one reads the champion while the better one is between reading and writing
        subprocess.Popen([sys.executable, RACER, name, v3, "0.6", "0.3", str(go)], stdout=subprocess.PIPE, text=True),
    ]
    import time

    deadline = time.monotonic() + 180  # both have imported MLflow and wait for the signal
    while not all(go.with_name(f"go.ready-{v}").exists() for v in (v2, v3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in racers), "racers not ready"
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120)[0].split() for p in racers]
    assert all(p.returncode == 0 for p in racers)
    # serialised: whichever took the lock second compared with the champion the first one left
    # (v2 first: v2 beats v1, then v3 loses to v2; v3 first: v3 beats v1, then v2 beats v3)
    orders = {0: ([["True", v1], ["False", v2]], [v1, v2]), 1: ([["True", v3], ["True", v1]], [v1, v3, v2])}
    order = 0 if outs[1] == ["False", v2] else 1
    assert outs == orders[order][0], outs
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2
    assert [e["version"] for e in registry.champion_history(name)] == orders[order][1]


def test_each_move_is_a_record_of_its_own_and_the_history_reads_in_one_call(monkeypatch):
    """40 moves with reviewers' long reasons: no value grows (a tag holds 5000 characters on
    PostgreSQL), the history lists every move, rollback walks it, and reading it is one call."""
    client = MlflowClient()
    name = f"stfn-long-{uuid.uuid4().hex[:8]}"
    versions = [_version(client, name, "accuracy", 0.5 + i / 10) for i in range(3)]
    reason = "approved after review: " + "the gate report, the slices and the calibration were in order; " * 5
    for i in range(40):
        registry.promote(name, versions[i % 3], reason)
    tags = client.get_registered_model(name).tags
    assert max(len(v) for v in tags.values()) < 5000 and registry.HISTORY_TAG not in tags
    calls = []
    real = MlflowClient.get_registered_model
    monkeypatch.setattr(MlflowClient, "get_registered_model", lambda self, n: calls.append(n) or real(self, n))
    history = registry.champion_history(name)
    assert len(calls) == 1 and len(history) == 40 and history[-1]["reason"] == reason
    assert registry.rollback(name) == (versions[0], versions[2])


def test_a_history_kept_the_old_way_goes_on_and_rolls_back_across_it():
    """A model whose moves were one JSON list (as release 0.1.0 kept them) gets new moves as
    records of their own; rollback walks both, newest first."""
    import json

    client = MlflowClient()
    name = f"stfn-old-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = (_version(client, name, "accuracy", v) for v in (0.5, 0.6, 0.7))
    old = [
        {"action": "promote", "version": v, "previous": p, "reason": "gate", "at": "2026-12-01T00:00:00Z"}
        for v, p in ((v1, None), (v2, v1))
    ]
    client.set_registered_model_tag(name, registry.HISTORY_TAG, json.dumps(old))
    client.set_registered_model_alias(name, "champion", v2)
    registry.promote(name, v3, "manual")
    assert [e["version"] for e in registry.champion_history(name)] == [v1, v2, v3]
    assert client.get_registered_model(name).tags[registry.HISTORY_TAG] == json.dumps(old)  # never rewritten
    assert registry.rollback(name) == (v3, v2) and registry.rollback(name) == (v2, v1)


def test_a_move_retried_after_a_server_fault_is_recorded_once(monkeypatch):
    """The server drops the connection after the move's record is written, before the alias moves:
    the retry finds its own record and only moves the alias."""
    import requests

    client = MlflowClient()
    name = f"stfn-retry-{uuid.uuid4().hex[:8]}"
    v1, v2 = (_version(client, name, "accuracy", v) for v in (0.5, 0.6))
    registry.promote(name, v1, "first")
    real, failed = MlflowClient.set_registered_model_alias, []

    def flaky(self, *args):
        if not failed:
            failed.append(args)
            raise requests.exceptions.ConnectionError("connection reset by peer")
        return real(self, *args)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    assert registry.promote(name, v2, "second") == v1 and failed
    assert [(e["action"], e["version"]) for e in registry.champion_history(name)] == [("promote", v1), ("promote", v2)]
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2


def test_a_move_whose_process_died_before_the_alias_is_replaced_by_the_next_move(monkeypatch):
    """The process dies after a move's record is written, before the alias moves, and nothing
    retries it: the next move (another version) takes that record's place, so the history holds
    only moves that happened and a rollback never goes to a version that was never champion."""
    client = MlflowClient()
    name = f"stfn-died-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = (_version(client, name, "accuracy", v) for v in (0.5, 0.6, 0.7))
    registry.promote(name, v1, "first")

    def dies(self, *args):
        raise SystemExit("killed")  # nothing after the record runs, as with kill -9

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "set_registered_model_alias", dies)
        with pytest.raises(SystemExit):
            registry.set_champion(name, v2, "gate: the move that never landed")
    assert [e["version"] for e in registry.champion_history(name)] == [v1, v2]  # the record, alone
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    registry.promote(name, v3, "third")
    history = registry.champion_history(name)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [("promote", v1, None), ("promote", v3, v1)]
    assert history[-1]["replaces_unfinished"].startswith(f"promote to v{v2}")
    assert registry.rollback(name) == (v3, v1)  # back to the champion that was, never to v2


def test_a_database_error_of_the_server_reaches_the_user_as_one_sentence_without_sql():
    from mlflow.exceptions import MlflowException

    raw = (
        "(psycopg2.errors.StringDataRightTruncation) value too long for type character varying(5000)\n\n"
        "[SQL: UPDATE registered_model_tags SET value=%(value)s WHERE registered_model_tags.key = %(key)s]\n"
        "[parameters: {'value': '[{\"action\": \"promote\", ...}]', 'key': 'champion_history'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/9h9h)"
    )

    @tracking.retrying("recording the move")
    def write():
        raise MlflowException(raw)

    with pytest.raises(tracking.TrackingError) as err:
        write()
    said = str(err.value)
    assert said.endswith("failed while recording the move: value too long for type character varying(5000)")
    assert "SQL" not in said and "parameters" not in said and "\n" not in said
    assert tracking.server_failure(MlflowException("Registered Model with name=x not found")) is None
