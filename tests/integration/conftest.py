"""Fixtures of the team-mode tests: PostgreSQL databases made for one test; team servers shared
by the tests that only talk to them."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
from teamlib import PG, free_port, stfn_cmd


@contextmanager
def _databases(need):
    """Two fresh PostgreSQL databases (MLflow's and Prefect's), dropped afterwards. When PostgreSQL
    is not reachable the test fails under CI, is skipped elsewhere, saying what to start."""
    import psycopg2

    try:
        conn = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.Error as exc:
        refused = " ".join(str(exc).split())
    else:
        refused = None
    if refused is not None:
        need(
            f"PostgreSQL not reachable at {PG['host']}:{PG['port']} (user {PG['user']}, trust auth,"
            f" database {PG['dbname']}; {refused})",
            "start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`"
            f" (and `createdb -h {PG['host']} -U {PG['user']} {PG['dbname']}` once)",
        )
    conn.autocommit = True
    names = [f"stfn_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "prefect")]
    with conn.cursor() as cur:
        for n in names:
            cur.execute(f'CREATE DATABASE "{n}"')
    try:
        yield names
    finally:
        with conn.cursor() as cur:
            for n in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def pg_databases(need):
    """Two fresh PostgreSQL databases for one test."""
    with _databases(need) as names:
        yield names


@pytest.fixture(scope="session")
def team_servers(tmp_path_factory, need):
    """`stfn servers start` on fresh PostgreSQL databases and free ports, shared by the tests that
    only need servers to talk to (deploy, the promotion race: they use their own pool and model
    names); stopped at the end of the session. The files that use it run on one worker
    (tests/conftest.py, SHARED_SERVERS): ~11 s of start and stop once."""
    root = tmp_path_factory.mktemp("team-servers")
    with _databases(need) as (mlflow_db, prefect_db):
        mp, pp = free_port(), free_port()
        env = {
            "STFN_DB_URL": f"postgresql://postgres@127.0.0.1:5432/{mlflow_db}",
            "STFN_PREFECT_DB_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}",
        }
        started = stfn_cmd(root, env, "servers", "start", "--mlflow-port", str(mp), "--prefect-port", str(pp))
        info = {
            "started": started,
            "mlflow_port": mp,
            "prefect_port": pp,
            "mlflow_db": mlflow_db,
            "prefect_db": prefect_db,
            "client_env": {
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mp}",
                "PREFECT_API_URL": f"http://127.0.0.1:{pp}/api",
            },
        }
        try:
            yield info
        finally:
            info["stopped"] = stfn_cmd(root, {}, "servers", "stop")
