"""Team mode for real: `stfn servers start` runs an MLflow tracking server and a Prefect server,
both on PostgreSQL (fresh databases on 127.0.0.1:5432), on free loopback ports; `stfn run`
reports to them; `stfn serve` serves the champion from them; a real browser (headless Chromium)
sees the champion and the run's metrics in the MLflow UI, and saves screenshots (to
docs/screenshots/ with `make docs-screenshots`, else to the test's temp folder); `stfn servers
stop` stops exactly what was started."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from browserlib import check_mlflow_ui, ensure_chromium
from teamlib import BIN, LEARNING_DIGITS, PG, free_port, stfn_cmd


def assert_serves(root: Path, client_env: dict, version: str) -> None:
    """`stfn serve` started with the client environment answers two samples with `version`."""
    import requests

    from stfn.data.contract import load_spec

    spec = load_spec(root / "data" / "raw" / "moving-digits")
    series = [[[0.0] * len(spec.series.channels)] * spec.series.steps] * 2
    frames = [[[[[0] * spec.frames.width] * spec.frames.height] * spec.frames.channels] * spec.frames.count] * 2
    body = json.dumps({"inputs": {"series": series, "frames": frames}})

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **client_env}
    env["MLFLOW_REGISTRY_URI"] = client_env["MLFLOW_TRACKING_URI"]
    proc = subprocess.Popen(
        [str(BIN / "stfn"), "serve", "--port", str(port)], cwd=root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.post(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert r.status_code == 200 and r.headers["x-stfn-model-version"] == version, r.text
        assert len(r.json()["predictions"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.integration
def test_team_servers_on_postgresql_receive_a_run_serve_it_show_it_and_stop_cleanly(
    tmp_path, pg_databases, write_tiny_params, need
):
    ensure_chromium(need)
    shots = Path(os.environ["STFN_SCREENSHOTS"]).resolve() if os.environ.get("STFN_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    mlflow_db, prefect_db = pg_databases
    # with STFN_SCREENSHOTS: a run that learns, for the pictures in the docs
    write_tiny_params(tmp_path / "params.yaml", **(LEARNING_DIGITS if os.environ.get("STFN_SCREENSHOTS") else {}))
    mp, pp = free_port(), free_port()
    env = {
        "STFN_DB_URL": f"postgresql://postgres@127.0.0.1:5432/{mlflow_db}",
        "STFN_PREFECT_DB_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}",
    }
    started = stfn_cmd(tmp_path, env, "servers", "start", "--mlflow-port", str(mp), "--prefect-port", str(pp))
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "on postgresql" in started.stdout
        state = tmp_path / ".stfn" / "servers"
        pids = {name: int((state / f"{name}.pid").read_text()) for name in ("mlflow", "prefect")}
        client_env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mp}", "PREFECT_API_URL": f"http://127.0.0.1:{pp}/api"}
        run = stfn_cmd(tmp_path, client_env, "run")
        assert run.returncode == 0, run.stderr[-3000:]

        from mlflow import MlflowClient

        url = client_env["MLFLOW_TRACKING_URI"]
        client = MlflowClient(tracking_uri=url, registry_uri=url)  # not the process-wide registry URI
        champion = client.get_model_version_by_alias("stfn-moving-digits", "champion")
        assert {"git_sha", "data_md5", "params_hash", "prefect_flow_run_id"} <= set(champion.tags)
        mlflow_run = client.get_run(champion.run_id)
        assert "test_accuracy" in mlflow_run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(champion.run_id, "plots")}
        assert "plots/confusion_matrix.png" in artifacts  # uploaded through the server's artifact proxy
        # the rows really are in PostgreSQL
        import psycopg2

        with psycopg2.connect(**{**PG, "dbname": mlflow_db}) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (champion.run_id,))
            assert cur.fetchone()[0] == 1
        # the flow run is on the Prefect server, COMPLETED
        flow_run_id = champion.tags["prefect_flow_run_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{pp}/api/flow_runs/{flow_run_id}", timeout=10) as resp:
            assert json.loads(resp.read())["state"]["type"] == "COMPLETED"
        with psycopg2.connect(**{**PG, "dbname": prefect_db}) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM flow_run WHERE id = %s", (flow_run_id,))
            assert cur.fetchone()[0] == 1
        # `stfn serve` against the team store: the registry on PostgreSQL, the model through the proxy
        assert_serves(tmp_path, client_env, str(champion.version))
        check_mlflow_ui(url, client, shots)  # what a user sees of it
    finally:
        stopped = stfn_cmd(tmp_path, {}, "servers", "stop")
    assert stopped.returncode == 0 and "mlflow" in stopped.stdout and "prefect" in stopped.stdout
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for port in (mp, pp):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
