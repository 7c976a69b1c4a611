"""Promotion safety in team mode: two pipelines' promotions racing against a real MLflow server
and a real Prefect server (PostgreSQL) are serialised by the Prefect global concurrency limit
`stfn-promote-<model>`, so the later one compares with the champion the first one set. The same
race without the lock (the control) lets a worse model win: the test can tell the difference."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

RACER = str(Path(__file__).resolve().parents[1] / "racer.py")  # the promoting process
MOVER = str(Path(__file__).resolve().parents[1] / "mover.py")  # moves @champion many times
REPO = Path(__file__).resolve().parents[2]


def _versions(client, name: str, values: list[float]) -> list[str]:
    exp = client.create_experiment(f"race-{uuid.uuid4().hex[:6]}")
    client.create_registered_model(name)
    out = []
    for value in values:
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "test_accuracy", value)
        mv = client.create_model_version(name, source=f"runs:/{run}/model", run_id=run)
        client.set_model_version_tag(name, mv.version, "test_accuracy", str(value))
        out.append(str(mv.version))
    return out


def _race(env: dict, name: str, better: str, worse: str, go) -> list[list[str]]:
    full = {**os.environ, **env}

    def racer(version: str, value: str, delay: str) -> subprocess.Popen:
        argv = [sys.executable, RACER, name, version, value, delay, str(go), "1.5"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)

    # the worse one reads the champion while the better one is between reading and writing
    racers = [racer(better, "0.7", "0"), racer(worse, "0.6", "0.4")]
    deadline = time.monotonic() + 180  # both have imported MLflow and Prefect and wait for the signal
    while not all(go.with_name(f"{go.name}.ready-{v}").exists() for v in (better, worse)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in racers), "racers not ready"
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=180) for p in racers]
    assert all(p.returncode == 0 for p in racers), [o[1][-2000:] for o in outs]
    return [o[0].split() for o in outs]


@pytest.mark.slow
@pytest.mark.integration
def test_promotions_racing_on_team_servers_are_serialised(tmp_path, team_servers):
    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    from mlflow import MlflowClient
    from stfn import registry

    url = team_servers["client_env"]["MLFLOW_TRACKING_URI"]
    api = team_servers["client_env"]["PREFECT_API_URL"]
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url, "PREFECT_API_URL": api}

    name = f"stfn-race-{uuid.uuid4().hex[:6]}"
    v1, v2, v3 = _versions(client, name, [0.5, 0.7, 0.6])
    client.set_registered_model_alias(name, "champion", v1)
    (tmp_path / "a").mkdir()
    outs = _race(env, name, v2, v3, tmp_path / "a" / "go")
    # serialised: whichever took the lock second compared with the champion the first one left
    # (v2 first: v2 beats v1, then v3 loses to v2; v3 first: v3 beats v1, then v2 beats v3)
    assert outs in ([["True", v1], ["False", v2]], [["True", v3], ["True", v1]]), outs
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2
    import httpx

    limit = httpx.get(f"{api}/v2/concurrency_limits/{registry.PROMOTION_LIMIT.format(name=name)}", timeout=10).json()
    assert limit["limit"] == 1 and limit["active_slots"] == 0  # held during the race, released after

    # the control: the same race without a lock promotes the worse model on stale information
    control = f"stfn-race-{uuid.uuid4().hex[:6]}"
    c1, c2, c3 = _versions(client, control, [0.5, 0.7, 0.6])
    client.set_registered_model_alias(control, "champion", c1)
    unlocked = {**env, "PREFECT_API_URL": "", "STFN_UNLOCKED_PROMOTION": "1"}
    (tmp_path / "b").mkdir()
    outs = _race(unlocked, control, c2, c3, tmp_path / "b" / "go")
    assert outs == [["True", c1], ["True", c1]]  # both judged against v1
    assert str(client.get_model_version_by_alias(control, "champion").version) == c3  # 0.6 over 0.7


def test_a_tracking_server_without_a_lock_is_refused_before_training(monkeypatch):
    import mlflow
    from stfn import registry, tracking

    before = mlflow.get_tracking_uri()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("STFN_UNLOCKED_PROMOTION", raising=False)
    try:
        mlflow.set_tracking_uri("http://user:pw@127.0.0.1:9")
        with pytest.raises(tracking.TrackingError, match=r"no Prefect API .* PREFECT_API_URL") as err:
            registry.lock_kind()
        assert "pw" not in str(err.value)  # the URI is scrubbed
        monkeypatch.setenv("STFN_UNLOCKED_PROMOTION", "1")
        assert registry.lock_kind()[0] == "unlocked"
        mlflow.set_tracking_uri("file:/tmp/somewhere/mlruns")
        assert registry.lock_kind() == ("file", "/tmp/somewhere/mlruns")
    finally:
        mlflow.set_tracking_uri(before)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.thorough  # make test-all: 200 moves through the servers (about a minute)
def test_two_hundred_moves_on_postgresql_keep_a_history_that_rolls_back(tmp_path, team_servers):
    """Each move of @champion is its own record on the team's server (PostgreSQL keeps a tag in
    VARCHAR(5000): one growing value broke at the 16th move with reviewers' reasons). After 200
    promotions and rollbacks the history lists every move, `stfn rollback` works, and reading the
    history is one call to the server."""
    import json
    import shutil

    from teamlib import stfn_cmd

    from mlflow import MlflowClient
    from stfn import registry

    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    url = team_servers["client_env"]["MLFLOW_TRACKING_URI"]
    env = {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_REGISTRY_URI": url,
        "PREFECT_API_URL": team_servers["client_env"]["PREFECT_API_URL"],
    }
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    dataset = f"history-{uuid.uuid4().hex[:6]}"
    name = f"stfn-{dataset}"
    versions = _versions(client, name, [0.5, 0.6, 0.7])
    registry_env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, MOVER, name, "200", *versions], cwd=tmp_path, env=registry_env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = client.get_registered_model(name).tags
    assert max(len(v) for v in tags.values()) < 5000
    history = registry._history(tags)
    assert len(history) == 200 and [e["action"] for e in history].count("rollback") == 50
    assert all(len(e["reason"]) > 300 for e in history if e["action"] == "promote")
    stack = registry.champion_stack(history)
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    assert stack[-1] == champion

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    rolled = stfn_cmd(tmp_path, env, "rollback", "--dataset", dataset, timeout=300)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert f"rolled back from v{champion} to v{stack[-2]}" in rolled.stdout
    listed = stfn_cmd(tmp_path, env, "models", "--dataset", dataset, timeout=300)
    assert listed.returncode == 0 and "@champion history" in listed.stdout, listed.stderr[-3000:]
    after = registry._history(client.get_registered_model(name).tags)
    assert len(after) == 201 and after[-1]["action"] == "rollback" and json.dumps(after)
