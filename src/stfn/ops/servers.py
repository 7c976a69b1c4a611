"""Team mode: a Prefect server and an MLflow tracking server on this machine, started and
stopped as background processes with PID files (`make servers`, `make servers-stop`).

- MLflow: `mlflow server` with the backend store `STFN_DB_URL` (PostgreSQL, e.g.
  postgresql://mlflow@127.0.0.1:5432/mlflow) or else the project's SQLite file; artifacts proxied
  by the server (`--serve-artifacts`) into `mlflow/artifacts` (or `STFN_ARTIFACTS_DESTINATION`,
  e.g. s3://bucket/mlflow); one worker and job execution off, for a quick start.
- Prefect: `prefect server start`, on PostgreSQL when `STFN_PREFECT_DB_URL` is set
  (postgresql+asyncpg://…), else SQLite under `.stfn/prefect-server`.
- With `auth=True` (`stfn servers start --auth`, or STFN_MLFLOW_AUTH=1) both servers want
  credentials. MLflow runs its basic-auth app: every request needs a user
  (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on the clients); the admin's password comes
  from MLFLOW_AUTH_ADMIN_PASSWORD (never written to disk by us), the users live in
  STFN_AUTH_DB_URL or `.stfn/servers/mlflow-auth.db`. Prefect runs with its basic auth
  (PREFECT_SERVER_API_AUTH_STRING), the `user:password` of PREFECT_API_AUTH_STRING, which its
  clients (`stfn deploy`, the worker and the flow runs it starts) send.
No secret goes on a command line (readable by every local user in `ps`) or into a file: the
database URLs and the auth string reach the servers through their environment (see `commands`,
`auth_settings`, `prefect_auth_settings`), and what we record or print of a URL is scrubbed.
Each process we start gets only the part of the caller's environment it needs (`child_env`).
Both bind to 127.0.0.1 unless told otherwise. Each runs in its own process group, so stopping
it stops its workers too; `stop` only ever signals the processes whose PIDs it recorded.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from stfn.config import Paths
from stfn.tracking import scrub_uri, tracking_uri

SERVICES = ("mlflow", "prefect")

# What each process we start gets of the caller's environment (fnmatch patterns), then what it is
# refused of that even so; our own settings for it come on top (`child_env`). The rest (cloud keys,
# tokens, the other server's settings and secrets) stays with the caller.
_EVERY = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TEMP", "TMP",
    "VIRTUAL_ENV", "PYTHON*",  # the venv's
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",  # TLS trust
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
_SERVER_SIDE = ("PREFECT_SERVER_*", "PREFECT_API_DATABASE_*", "MLFLOW_AUTH_*", "MLFLOW_FLASK_*",
                "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION")  # fmt: skip
# the worker and the flow runs it starts (they inherit its environment): a Prefect client, an
# MLflow client, and what training needs of the host
# (STFN_TUNE_STORAGE, PG*: stfn tune's workers reach the shared study's database)
_WORKER = ("PREFECT_*", "MLFLOW_*", "CUDA_*", "NVIDIA_*", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
           "DVC_*", "MPLBACKEND", "DO_NOT_TRACK", "STFN_TUNE_STORAGE", "PG*")  # fmt: skip
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # its settings and libpq's (PGPASSWORD, PGSSLMODE...); not the caller's client credentials
    "mlflow-server": (("MLFLOW_*", "PG*"), ("MLFLOW_TRACKING_*",)),
    "mlflow-ui": (("MLFLOW_*", "PG*"), ("MLFLOW_TRACKING_*", "MLFLOW_AUTH_*", "MLFLOW_FLASK_*")),
    # its auth string only from `--auth` (prefect_auth_settings); no Prefect Cloud key
    "prefect-server": (("PREFECT_*", "PG*"), ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_KEY")),
    # `prefect deploy`, `prefect work-pool create`: a Prefect client
    "prefect-client": (("PREFECT_*",), _SERVER_SIDE),
    "worker": (_WORKER, _SERVER_SIDE),
}
# the credentials an artifacts destination's client library reads, by its scheme (MLflow server)
STORE_CREDENTIALS = {"s3": ("AWS_*",), "gs": ("GOOGLE_*",), "wasbs": ("AZURE_*",), "abfss": ("AZURE_*",)}
# variables whose values are secrets: masked in any text of a child's we show (`mask`)
_SECRET_VARS = ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD",
                "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD")  # fmt: skip


def child_env(role: str, extra: dict[str, str] | None = None, also: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a process we start in `role` (a key of ROLES): of the caller's, the
    basics every process needs (_EVERY) and the patterns of its role (plus `also`), less what its
    role is refused; then `extra`, our settings for it. The worker also gets the variables named
    in STFN_WORKER_ENV (names or patterns, space or comma separated: e.g. the AWS_* keys of a DVC
    remote on S3 that `dvc pull` in the retrain flow reads)."""
    allowed, refused = ROLES[role]
    allowed = (*_EVERY, *allowed, *also)
    if role == "worker":
        allowed += tuple(os.environ.get("STFN_WORKER_ENV", "").replace(",", " ").split())

    def matches(name: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    env = {k: v for k, v in os.environ.items() if matches(k, allowed) and not matches(k, refused)}
    return {**env, **(extra or {})}


def mask(text: str) -> str:
    """`text` (a child's output, a log's tail) as it may be shown: every URI scrubbed (scrub_uri)
    and the value of every secret variable we know of (_SECRET_VARS) set here replaced by ***."""
    text = scrub_uri(text)
    for name in _SECRET_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:  # a one-letter "secret" would mask every such letter
            text = text.replace(value, "***")
    return text


def _state(paths: Paths) -> Path:
    folder = paths.state / "servers"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = mask(log.read_text(errors="replace")[-2000:]) if log.is_file() else ""
            raise RuntimeError(f"server exited with code {proc.returncode} before {scrub_uri(url)} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{scrub_uri(url)} did not answer within {timeout:.0f} s (log: {log})")


def _sqlalchemy_url(url: str) -> str:
    """A database URL as MLflow's SQLAlchemy takes it: postgresql:// names psycopg2, the driver
    we ship (SQLAlchemy 2.1 would pick psycopg 3)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _split_password(url: str) -> tuple[str, str | None]:
    """`url` without its password, and the password (None when the URL has none)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None:
        return url, None
    # `set(password=None)` would keep it: SQLAlchemy documents `_replace` for setting None
    return parsed._replace(password=None).render_as_string(hide_password=False), str(parsed.password)


# drivers that connect through libpq, which reads PGPASSWORD when the URL has no password
_LIBPQ_DRIVERS = ("postgresql+psycopg2://", "postgresql+psycopg://")


def auth_settings(paths: Paths) -> dict[str, str]:
    """The environment of MLflow's basic-auth app: its config file (written here, no secret in
    it), the CSRF secret key (MLFLOW_FLASK_SERVER_SECRET_KEY, else one generated once and kept
    0600 beside the PID files), the admin password, which must be given, and the password of the
    users' database (PGPASSWORD) when STFN_AUTH_DB_URL has one."""
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise RuntimeError(
            "MLflow basic auth needs the admin's password: set MLFLOW_AUTH_ADMIN_PASSWORD (and "
            "MLFLOW_AUTH_ADMIN_USERNAME, default 'admin') for the first start; clients then use "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    state = _state(paths)
    users = _sqlalchemy_url(os.environ.get("STFN_AUTH_DB_URL") or f"sqlite:///{(state / 'mlflow-auth.db').resolve()}")
    # MLflow 3.17's basic-auth app reads its database only from `database_uri` in this file
    # (mlflow/server/auth/config.py: no environment override, no interpolation from the
    # environment), so the file gets the URL without its password and the password goes to
    # the server's environment as PGPASSWORD, which libpq (psycopg2) reads when the URL has none.
    # The environment of a process is readable only by its user, unlike its command line.
    # PGPASSWORD also reaches the tracking store's connection if STFN_DB_URL has no password.
    users, users_password = _split_password(users)
    extra: dict[str, str] = {}
    if users_password is not None:
        if not users.startswith(_LIBPQ_DRIVERS):
            raise RuntimeError(
                "STFN_AUTH_DB_URL has a password, and MLflow's basic-auth app would need it written in "
                "its config file: only a PostgreSQL URL (psycopg2) can take it from the environment "
                "(PGPASSWORD). Remove the password from the URL and give it the way your database "
                "driver reads it"
            )
        extra["PGPASSWORD"] = users_password
    ini = state / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {users}\n"
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
    if not key:
        key_file = state / "flask-secret-key"
        if not key_file.is_file():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_hex(32))
        key = key_file.read_text().strip()
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": key, **extra}


def prefect_auth_settings() -> dict[str, str]:
    """The environment of Prefect's basic auth (Prefect 3: the server compares each request's
    `Authorization: Basic` with PREFECT_SERVER_API_AUTH_STRING; its clients send
    PREFECT_API_AUTH_STRING). The server gets the caller's PREFECT_API_AUTH_STRING, which must be
    given (`user:password`, no default), so that the clients we start, which get the same from the
    caller, are let in. By environment only: never on a command line or in a file of ours."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth:
        raise RuntimeError(
            "Prefect's basic auth needs its credentials: set PREFECT_API_AUTH_STRING=user:password for "
            "`stfn servers start --auth`; every Prefect client (`stfn deploy`, `stfn run`, `prefect ...`) "
            "then sends the same"
        )
    return {"PREFECT_SERVER_API_AUTH_STRING": auth}


def commands(
    paths: Paths, host: str, mlflow_port: int, prefect_port: int, auth: bool = False
) -> dict[str, dict[str, Any]]:
    """The command line and environment of each server (what `start` runs). The store URLs,
    which may hold passwords, go in the environment, never in argv: `mlflow server` reads
    --backend-store-uri from MLFLOW_BACKEND_STORE_URI and --artifacts-destination from
    MLFLOW_ARTIFACTS_DESTINATION (click envvars, mlflow/cli/__init__.py, utils/cli_args.py) and
    hands them to its workers in their environment; Prefect reads its database from
    PREFECT_API_DATABASE_CONNECTION_URL."""
    db = _sqlalchemy_url(os.environ.get("STFN_DB_URL") or f"sqlite:///{paths.mlflow_dir.resolve() / 'mlflow.db'}")
    artifacts = os.environ.get("STFN_ARTIFACTS_DESTINATION") or str(paths.mlflow_dir.resolve() / "artifacts")
    mlflow_auth = auth_settings(paths) if auth else {}  # refuses without an admin password
    prefect_env = {
        "PREFECT_HOME": str(paths.state / "prefect-server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the API its UI calls: Prefect's default is port 4200 whatever --port says, so a server on
        # another port served a UI that showed nothing ("Can't connect to Server API")
        "PREFECT_SERVER_UI_API_URL": f"http://{host}:{prefect_port}/api",
    }
    if os.environ.get("STFN_PREFECT_DB_URL"):
        prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = os.environ["STFN_PREFECT_DB_URL"]
    if auth:
        prefect_env.update(prefect_auth_settings())
    # the client library of the artifacts destination reads its credentials from the environment
    store_credentials = STORE_CREDENTIALS.get(artifacts.partition("://")[0], ())
    return {
        "mlflow": {
            "argv": [
                _bin("mlflow"),
                "server",
                "--serve-artifacts",
                "--host",
                host,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                *(["--app-name", "basic-auth"] if auth else []),
            ],  # fmt: skip
            "env": child_env(
                "mlflow-server",
                {
                    "MLFLOW_BACKEND_STORE_URI": db,
                    "MLFLOW_ARTIFACTS_DESTINATION": artifacts,
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                    **mlflow_auth,
                },
                also=store_credentials,
            ),
            "auth": "basic-auth" if auth else "none",
            "url": f"http://{host}:{mlflow_port}",
            "health": f"http://{host}:{mlflow_port}/health",
            "backend": "postgresql" if db.startswith("postgresql") else "sqlite",
        },
        "prefect": {
            "argv": [_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            "env": child_env("prefect-server", prefect_env),
            "auth": "basic-auth" if auth else "none",
            "url": f"http://{host}:{prefect_port}/api",
            "health": f"http://{host}:{prefect_port}/api/health",
            "backend": "postgresql" if "STFN_PREFECT_DB_URL" in os.environ else "sqlite",
        },
    }


def start(
    paths: Paths,
    host: str = "127.0.0.1",
    mlflow_port: int = 5000,
    prefect_port: int = 4200,
    timeout: float = 180,
    auth: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Start both servers (each unless already running) and wait until they answer."""
    state = _state(paths)
    (paths.state / "prefect-server").mkdir(parents=True, exist_ok=True)
    paths.mlflow_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, Any]] = {}
    if auth is None:
        auth = os.environ.get("STFN_MLFLOW_AUTH") == "1"
    launched: dict[str, tuple[subprocess.Popen, Path]] = {}
    specs = commands(paths, host, mlflow_port, prefect_port, auth)
    for name in specs:
        pid_file = state / f"{name}.pid"
        if pid_file.is_file() and _alive(int(pid_file.read_text())):
            info[name] = {**json.loads((state / f"{name}.json").read_text()), "already_running": True}
            if auth and info[name].get("auth", "none") == "none":
                raise RuntimeError(
                    f"the {name} server (pid {info[name]['pid']}) already runs without auth: stop it "
                    "(`stfn servers stop`) and start again with --auth"
                )
    for name, spec in specs.items():  # both start at once: each spends seconds importing and migrating
        if name in info:
            continue
        pid_file = state / f"{name}.pid"
        log = state / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                spec["argv"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=spec["env"],  # child_env: what it needs of ours, no more
                start_new_session=True,  # its own process group: stop() ends its workers too
                cwd=paths.root,
            )
        pid_file.write_text(str(proc.pid))
        launched[name] = (proc, log)
    for name, (proc, log) in launched.items():
        spec = specs[name]
        try:
            _wait_healthy(spec["health"], proc, log, timeout)
        except RuntimeError:
            _stop_all(state, list(launched))  # none of this call's servers is left half started
            raise
        record = {"pid": proc.pid, "url": scrub_uri(spec["url"]), "backend": spec["backend"], "log": str(log)}
        record["auth"] = spec["auth"]
        record["argv"] = [scrub_uri(a) for a in spec["argv"]]
        (state / f"{name}.json").write_text(json.dumps(record, indent=2))
        info[name] = record
    return {name: info[name] for name in specs}


def stop_group(pid: int, timeout: float = 20) -> None:
    """Stop the process group `pid` leads (started with `start_new_session`): SIGTERM, then
    SIGKILL to whatever of the group is left after `timeout` s; returns when the whole group is
    gone (reaping the leader when it is our child)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # a dead child of ours stays in the group until reaped
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _stop_one(state: Path, name: str, timeout: float = 20) -> str | None:
    pid_file = state / f"{name}.pid"
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text())
    if _alive(pid):
        stop_group(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return f"{name} (pid {pid})"


def _stop_all(state: Path, names: list[str], timeout: float = 20) -> list[str]:
    """Stop the named processes side by side (each takes seconds to shut down gracefully)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        stopped = list(pool.map(lambda name: _stop_one(state, name, timeout), names))
    return [s for s in stopped if s]


def start_worker(paths: Paths, pool: str, env: dict[str, str]) -> dict[str, Any]:
    """A Prefect process worker for `pool` in the background (PID file worker-<pool>.pid), with
    `env` (PREFECT_API_URL, MLFLOW_TRACKING_URI) over the part of our environment a worker gets
    (`child_env`: PREFECT_API_AUTH_STRING and the MLflow client's credentials among it); `stop`
    stops it with the servers."""
    state = _state(paths)
    name = f"worker-{pool}"
    pid_file = state / f"{name}.pid"
    if pid_file.is_file() and _alive(int(pid_file.read_text())):
        return {"pid": int(pid_file.read_text()), "already_running": True, "log": str(state / f"{name}.log")}
    log = state / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [_bin("prefect"), "worker", "start", "--pool", pool, "--name", f"stfn-{pool}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env("worker", env),
            start_new_session=True,
            cwd=paths.root,
        )
    pid_file.write_text(str(proc.pid))
    return {"pid": proc.pid, "log": str(log)}


def stop(paths: Paths) -> list[str]:
    """Stop exactly the servers and workers that `start` / `start_worker` recorded."""
    state = _state(paths)
    names = [*SERVICES, *sorted(p.stem for p in state.glob("worker-*.pid"))]
    return _stop_all(state, names)


def status(paths: Paths) -> dict[str, dict[str, Any]]:
    state = _state(paths)
    out = {}
    for name in SERVICES:
        pid_file, record = state / f"{name}.pid", state / f"{name}.json"
        if pid_file.is_file() and record.is_file():
            rec = json.loads(record.read_text())
            out[name] = {**rec, "running": _alive(int(pid_file.read_text()))}
    return out


def recorded_url(paths: Paths, name: str) -> str | None:
    """The URL of the `name` server (mlflow, prefect) that `stfn servers start` runs, if it runs."""
    rec = status(paths).get(name)
    return rec["url"] if rec and rec["running"] else None


def ui_of_api(api: str) -> str:
    """A Prefect server's UI address from its API address (http://host:4200/api -> http://host:4200),
    to be shown: scrubbed of any password."""
    return scrub_uri(api.rstrip("/").removesuffix("/api"))


def prefect_ui_url(paths: Paths) -> str | None:
    """The Prefect UI of the configured server (PREFECT_API_URL, else `stfn servers start`'s)."""
    api = os.environ.get("PREFECT_API_URL") or recorded_url(paths, "prefect")
    return ui_of_api(api) if api else None


def ui(paths: Paths, host: str = "127.0.0.1", port: int = 5000, ready=None) -> int:
    """Serve the MLflow UI against the project's store until interrupted (Ctrl-C / SIGTERM),
    then stop it and everything it started. With a tracking server configured there is nothing
    to start: its address is the UI. `ready(urls)` is called once the UI answers."""
    uri = tracking_uri(paths.mlflow_dir)
    urls = {"prefect": prefect_ui_url(paths)}
    if uri.startswith(("http://", "https://")):
        urls["mlflow"] = scrub_uri(uri)
        if ready:
            ready(urls)
        return 0
    paths.mlflow_dir.mkdir(parents=True, exist_ok=True)
    artifacts = str(paths.mlflow_dir.resolve() / "artifacts")
    argv = [_bin("mlflow"), "ui", "--default-artifact-root", artifacts,
            "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip
    log = _state(paths) / "mlflow-ui.log"
    # the store's URL (it may hold a password) by environment, not on the command line
    env = child_env("mlflow-ui", {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                  "MLFLOW_DISABLE_TELEMETRY": "true"})  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=paths.root)  # fmt: skip
    # Ctrl-C and SIGTERM stop it, even when started with SIGINT ignored (as `cmd &` does)
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _wait_healthy(f"http://{host}:{port}/health", proc, log, 120)
        urls["mlflow"], urls["started"] = f"http://{host}:{port}", True
        if ready:
            ready(urls)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(proc.pid, 15)
        proc.poll()
