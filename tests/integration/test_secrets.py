"""Team mode with basic auth on both servers, and no secret in a process's command line, in a
file we write, or in what we print or log. One team-mode start serves both checks.

Basic auth (`stfn servers start --auth`): refused to start without an admin password; an
anonymous or wrongly authenticated request is refused (401), the admin's served; the pipeline's
tracking calls work with MLFLOW_TRACKING_USERNAME/PASSWORD and a wrong password is refused at
once (not retried as "unreachable"); the CSRF key file is 0600. The Prefect server wants
PREFECT_API_AUTH_STRING: a Prefect client without it, or with a wrong one, is refused (401), the
one with it is served, and so are the `prefect` commands of `stfn deploy` and its worker (which
registers with the server).

Environment: a secret of the caller's that no server needs (AWS_SECRET_ACCESS_KEY) reaches
neither server nor the worker; the worker gets PREFECT_API_AUTH_STRING.

Secrets:
team mode on PostgreSQL with a role whose password is in every database URL (STFN_DB_URL,
STFN_PREFECT_DB_URL, STFN_AUTH_DB_URL), MLflow's basic auth with its admin password, and
`stfn deploy` with a worker and a tracking URI that carries the admin's credentials. While all of
it runs, neither password is in any command line; afterwards neither is in any file under the
project (its .stfn state, the servers' and the worker's logs included) nor in what the commands
printed. The passwords did reach the servers: through their environment.

PostgreSQL here trusts 127.0.0.1, so it does not check the role's password: the test follows
where the string travels, not whether the database would accept it."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from teamlib import PG, free_port, stfn_cmd

REPO = Path(__file__).resolve().parents[2]
ROLE = "stfn_secret_test"
DB_PASSWORD = f"DbPw{secrets.token_hex(12)}Zq"  # distinctive: found nowhere else by chance
ADMIN_PASSWORD = f"AdminPw-{secrets.token_hex(12)}-9"
PREFECT_AUTH = f"stfn:PrefectPw-{secrets.token_hex(12)}-4"  # user:password
AWS_SECRET = f"AwsKey{secrets.token_hex(12)}Xq"  # the caller's, needed by none of them
SECRETS = (DB_PASSWORD, ADMIN_PASSWORD, PREFECT_AUTH, AWS_SECRET)


def _admin(need):
    import psycopg2

    try:
        conn = psycopg2.connect(connect_timeout=3, **PG)
    except psycopg2.Error as exc:
        need(
            f"PostgreSQL not reachable at {PG['host']}:{PG['port']} ({' '.join(str(exc).split())})",
            "start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`",
        )
    conn.autocommit = True
    return conn


def _drop_role(cur) -> None:
    """The role and every database it owns (left over by an interrupted run, too)."""
    cur.execute("SELECT datname FROM pg_database d JOIN pg_roles r ON d.datdba = r.oid WHERE r.rolname = %s", (ROLE,))
    for (name,) in cur.fetchall():
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    cur.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture
def secret_role(need):
    """A login role with DB_PASSWORD owning three fresh databases (MLflow's, Prefect's, the
    auth app's users); all dropped afterwards."""
    conn = _admin(need)
    names = [f"stfn_secret_{kind}_{secrets.token_hex(4)}" for kind in ("mlflow", "prefect", "auth")]
    with conn.cursor() as cur:
        _drop_role(cur)
        cur.execute(f"CREATE ROLE {ROLE} WITH LOGIN PASSWORD %s", (DB_PASSWORD,))
        for n in names:
            cur.execute(f'CREATE DATABASE "{n}" OWNER {ROLE}')
    try:
        yield names
    finally:
        with conn.cursor() as cur:
            _drop_role(cur)
        conn.close()


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _cmdline(pid: int | str) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _command_lines() -> tuple[str, str]:
    """Every process's command line, as `ps` shows it to any user and as /proc holds it."""
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    raw = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            raw.append(_cmdline(proc.name))
        except OSError:  # the process ended meanwhile
            pass
    return ps, "\n".join(raw)


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode("utf-8", "replace")


async def _prefect_pools(api: str, auth: str | None, pool: str | None = None):
    """A real Prefect client of the server at `api`: its work pools, or the workers of `pool`."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api, auth_string=auth) as client:
        return await (client.read_workers_for_work_pool(pool) if pool else client.read_work_pools())


def _prefect_refuses(api: str, auth: str | None) -> None:
    import asyncio

    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as refused:
        asyncio.run(_prefect_pools(api, auth))
    assert refused.value.response.status_code == 401


def _tracking_with_credentials(url: str, tmp_path: Path, monkeypatch) -> None:
    """The pipeline's tracking calls, authenticated by MLFLOW_TRACKING_USERNAME/PASSWORD."""
    import mlflow
    from stfn import tracking

    for k, v in {"MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                 "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        tracking.configure(tmp_path / "mlflow")
        run_id = tracking.start_run("auth", tmp_path / "mlflow", "auth", {})
        tracking.log_metrics(run_id, {"x": 1.0}, step=1)
        assert mlflow.MlflowClient(url).get_run(run_id).data.metrics["x"] == 1.0
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            tracking.log_metrics(run_id, {"x": 2.0}, step=2)  # refused at once: not retried as "unreachable"
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.delenv(k, raising=False)


@pytest.mark.slow
@pytest.mark.integration
def test_basic_auth_and_no_password_in_command_lines_files_or_output(
    tmp_path, secret_role, write_tiny_params, monkeypatch
):
    mlflow_db, prefect_db, auth_db = secret_role
    mp, pp = free_port(), free_port()

    def url(driver: str, db: str) -> str:
        return f"{driver}://{ROLE}:{DB_PASSWORD}@127.0.0.1:5432/{db}"

    env = {
        "STFN_DB_URL": url("postgresql", mlflow_db),
        "STFN_PREFECT_DB_URL": url("postgresql+asyncpg", prefect_db),
        "STFN_AUTH_DB_URL": url("postgresql", auth_db),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)  # this process: an anonymous Prefect client
    pool = "stfn-secret-pool"
    write_tiny_params(tmp_path / "params.yaml", **{"retrain.work_pool": pool, "retrain.cron": "0 3 * * 1"})
    shutil.copy2(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("__pycache__"))

    printed = []
    no_admin = {k: v for k, v in env.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    ports = ("--mlflow-port", str(mp), "--prefect-port", str(pp))
    refused = stfn_cmd(tmp_path, no_admin, "servers", "start", "--auth", *ports)
    assert refused.returncode == 1 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr  # no default password
    printed.append(refused)
    started = stfn_cmd(tmp_path, env, "servers", "start", "--auth", "--mlflow-port", str(mp), "--prefect-port", str(pp))
    printed.append(started)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "mlflow:" in started.stdout and started.stdout.count("with basic auth") == 2  # both servers
        state = tmp_path / ".stfn" / "servers"
        pids = {name: int((state / f"{name}.pid").read_text()) for name in ("mlflow", "prefect")}
        # the servers got the password, by environment (readable only by their user)
        assert f"MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://{ROLE}:{DB_PASSWORD}@" in _environ(pids["mlflow"])
        assert f"PGPASSWORD={DB_PASSWORD}\n" in _environ(pids["mlflow"])  # the auth app's users database
        assert DB_PASSWORD in _environ(pids["prefect"])
        assert f"PREFECT_SERVER_API_AUTH_STRING={PREFECT_AUTH}\n" in _environ(pids["prefect"])
        for pid in pids.values():  # only the variables it needs
            assert AWS_SECRET not in _environ(pid)
        assert PREFECT_AUTH not in _environ(pids["mlflow"])
        # Prefect's basic auth: the anonymous and the wrong are refused, its user:password served
        import asyncio

        prefect_api = f"http://127.0.0.1:{pp}/api"
        assert _get(f"{prefect_api}/admin/version") == 401
        _prefect_refuses(prefect_api, None)
        _prefect_refuses(prefect_api, "stfn:wrong")
        assert isinstance(asyncio.run(_prefect_pools(prefect_api, PREFECT_AUTH)), list)
        # basic auth works, its users in the PostgreSQL database of STFN_AUTH_DB_URL
        api = f"http://127.0.0.1:{mp}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api) == 401 and _get(api, "admin", "wrong") == 401 and _get(api, "admin", ADMIN_PASSWORD) == 200
        _tracking_with_credentials(f"http://127.0.0.1:{mp}", tmp_path, monkeypatch)
        import psycopg2

        with psycopg2.connect(**{**PG, "dbname": auth_db}) as conn, conn.cursor() as cur:
            cur.execute("SELECT username FROM users")
            assert ("admin",) in cur.fetchall()
        with psycopg2.connect(**{**PG, "dbname": mlflow_db}) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM experiments")
            assert cur.fetchone()[0] >= 1  # MLflow's store is this database

        # deploy with a worker; the tracking URI carries the admin's credentials
        client_env = {
            "PREFECT_API_URL": prefect_api,
            "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
            "MLFLOW_TRACKING_URI": f"http://admin:{ADMIN_PASSWORD}@127.0.0.1:{mp}",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        }
        deployed = stfn_cmd(tmp_path, client_env, "deploy")
        printed.append(deployed)
        assert deployed.returncode == 0, deployed.stderr + deployed.stdout
        assert f"scheduled runs log to MLflow at http://admin:***@127.0.0.1:{mp}" in deployed.stdout
        assert "(PREFECT_API_AUTH_STRING exported)" in deployed.stdout
        worker_pid = int((state / f"worker-{pool}.pid").read_text())
        assert f"MLFLOW_TRACKING_URI=http://admin:{ADMIN_PASSWORD}@" in _environ(worker_pid)
        assert f"PREFECT_API_AUTH_STRING={PREFECT_AUTH}\n" in _environ(worker_pid)
        assert AWS_SECRET not in _environ(worker_pid)
        worker_log, deadline = state / f"worker-{pool}.log", time.monotonic() + 120
        while "started" not in worker_log.read_text() and time.monotonic() < deadline:  # its log has lines to scan
            time.sleep(0.2)
        # the worker got in: the server knows it (its heartbeat passed the auth)
        while not asyncio.run(_prefect_pools(prefect_api, PREFECT_AUTH, pool)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [w.name for w in asyncio.run(_prefect_pools(prefect_api, PREFECT_AUTH, pool))] == [f"stfn-{pool}"]

        ps, proc_cmdlines = _command_lines()
        for pid in (*pids.values(), worker_pid):  # the listing does show our servers and worker
            assert _cmdline(pid) in ps
        assert f"mlflow server --serve-artifacts --host 127.0.0.1 --port {mp}" in ps
        for secret in SECRETS:
            assert secret not in ps and secret not in proc_cmdlines
    finally:
        stopped = stfn_cmd(tmp_path, {}, "servers", "stop")
        printed.append(stopped)
    assert stopped.returncode == 0 and "worker" in stopped.stdout

    for proc in printed:
        for secret in SECRETS:
            assert secret not in proc.stdout + proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    logs = {p.name: p.stat().st_size for p in (tmp_path / ".stfn" / "servers").glob("*.log")}
    assert logs.get("mlflow.log") and logs.get("prefect.log") and logs.get(f"worker-{pool}.log"), logs
    assert (tmp_path / ".stfn" / "servers" / "basic_auth.ini").is_file()
    assert oct((tmp_path / ".stfn" / "servers" / "flask-secret-key").stat().st_mode & 0o777) == "0o600"
    leaks = [(str(p), s) for p in files for s in SECRETS if s.encode() in p.read_bytes()]
    assert not leaks
