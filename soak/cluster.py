"""The real parts a soak runs on, started for real: team mode's MLflow and Prefect servers on
fresh PostgreSQL databases (`stfn servers start`), `stfn deploy`'s deployments and a process
worker, a DVC remote, `stfn serve` under a supervisor that restarts it (as systemd or Kubernetes
would) and counts the downtime, a request loop that runs the whole time, and the inference log's
own small disk (a tmpfs mount) that a fault can fill.

Processes are found and killed with psutil (a flow run's process is the one whose environment
names its flow-run id); nothing here patches the code under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
POOL = "soak-pool"
VERSION_HEADER = "X-STFN-Model-Version"  # stfn.endpoint names the version that answered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600, check: bool = True):
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {out.returncode}: {(out.stderr or out.stdout)[-2000:]}")
    return out


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every descendant, as `kill -9` of its process group would."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def flow_run_process(flow_run_id: str) -> int | None:
    """The process running a flow run: a worker's child whose environment names the flow run."""
    want = f"{flow_run_id}"
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("PREFECT__FLOW_RUN_ID") == want:
                return p.pid
    return None


def du(path: Path) -> int:
    """Bytes under `path` (files only; 0 when it does not exist)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


class Cluster:
    """Team mode in `workdir`: the project (a git repository with DVC), the servers, the worker,
    the endpoint and its request loop. `close()` stops everything and drops the databases."""

    def __init__(self, workdir: Path, params: dict, log_disk_mb: int = 8, keep: bool = False, external: bool = False):
        self.workdir, self.params, self.keep, self.external = workdir, params, keep, external
        self.name = params["data"]["dataset"]
        self.project = workdir / "project"
        self.remote = workdir / "dvc-remote"
        self.dbs: list[str] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_disk_mb = log_disk_mb
        self.log_mount = self.project / ".stfn" / "inference"
        self.mounted = False
        self.env: dict[str, str] = {}
        self.serve_port = free_port()
        self.serve_url = f"http://127.0.0.1:{self.serve_port}"
        self.endpoint_up = threading.Event()
        self.downtime: list[dict] = []  # one row per endpoint outage: cause, seconds
        self.requests = {"ok": 0, "failed_while_up": 0, "failed_while_down": 0, "failures": []}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._killing = threading.Lock()
        self.answered_by: str | None = None  # the model version of the last answer

    # -- set-up ---------------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "STFN_"))}
        env.update(
            {
                "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DVC_NO_ANALYTICS": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "GIT_AUTHOR_NAME": "soak",
                "GIT_AUTHOR_EMAIL": "soak@localhost",
                "GIT_COMMITTER_NAME": "soak",
                "GIT_COMMITTER_EMAIL": "soak@localhost",
            }
        )
        return env

    def databases(self) -> None:
        if self.external:  # the team's own servers keep their own databases
            return
        import psycopg2

        try:
            conn = psycopg2.connect(connect_timeout=3, **PG)
        except psycopg2.Error as exc:
            raise SystemExit(
                f"soak: PostgreSQL not reachable at {PG['host']}:{PG['port']} (user {PG['user']}, database "
                f"{PG['dbname']}): {' '.join(str(exc).split())}; start it (pg_ctlcluster 15 main start)"
            ) from None
        conn.autocommit = True
        tag = uuid.uuid4().hex[:8]
        self.dbs = [f"stfn_soak_mlflow_{tag}", f"stfn_soak_prefect_{tag}"]
        with conn.cursor() as cur:
            for n in self.dbs:
                cur.execute(f'CREATE DATABASE "{n}"')
        conn.close()

    def project_files(self, initial) -> None:
        """The project: params.yaml, prefect.yaml, the flows, a git repository with DVC and a
        local remote, the initial dataset ingested as its first version."""
        self.project.mkdir(parents=True)
        shutil.copy2(REPO / "prefect.yaml", self.project / "prefect.yaml")
        shutil.copytree(REPO / "deploy", self.project / "deploy")
        shutil.copytree(REPO / "flows", self.project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
        (self.project / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))
        (self.project / ".gitignore").write_text(
            "/.stfn/\n/mlflow/\n/models/\n/features/\n/reports/\n/flows/__pycache__/\n/serve.log\n"
        )
        env = self.base_env()
        run(["git", "init", "-q", "-b", "main"], self.project, env)
        run([str(BIN / "dvc"), "init", "-q"], self.project, env)
        run([str(BIN / "dvc"), "remote", "add", "-d", "soak", str(self.remote)], self.project, env)
        initial(self.project / "data" / "raw" / self.name)
        run([str(BIN / "dvc"), "add", "-q", f"data/raw/{self.name}"], self.project, env)
        run([str(BIN / "dvc"), "push", "-q"], self.project, env)
        run(["git", "add", "-A"], self.project, env)
        run(["git", "commit", "-q", "-m", "week 0: the initial dataset"], self.project, env)

    def mount_log_disk(self) -> None:
        """The inference log's own disk: a tmpfs of `log_disk_mb` (root; the disk-full fault fills it)."""
        self.log_mount.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.log_disk_mb}m", "tmpfs", str(self.log_mount)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(
                f"soak: could not mount a {self.log_disk_mb} MB tmpfs for the inference log at {self.log_mount} "
                f"({out.stderr.strip()}): the disk-full fault needs root (or run with --no-disk-fault)"
            )
        self.mounted = True

    def start_servers(self) -> None:
        if self.external:
            self.env = external_env()
            return
        mlflow_db, prefect_db = self.dbs
        self.mlflow_port, self.prefect_port = free_port(), free_port()
        self.server_env = {
            "STFN_DB_URL": f"postgresql://postgres@127.0.0.1:5432/{mlflow_db}",
            "STFN_PREFECT_DB_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}",
        }
        self.servers_start()
        self.env = {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "PREFECT_API_URL": f"http://127.0.0.1:{self.prefect_port}/api",
        }

    def servers_start(self) -> None:
        """`stfn servers start`: starts the ones that are not running (after a kill: MLflow's)."""
        run(
            [
                str(BIN / "stfn"),
                "servers",
                "start",
                "--mlflow-port",
                str(self.mlflow_port),
                "--prefect-port",
                str(self.prefect_port),
            ],
            self.project,
            {**self.base_env(), **self.server_env},
            timeout=300,
        )

    def server_pid(self, name: str) -> int | None:
        f = self.project / ".stfn" / "servers" / f"{name}.pid"
        return int(f.read_text()) if f.is_file() else None

    def deploy(self) -> None:
        """`stfn deploy --no-worker`, then the schedules paused: the soak's clock runs the cron's
        retrains itself, week by week, instead of waiting for Monday 03:00."""
        env = {**self.base_env(), **self.env}
        if self.external:
            self.refuse_to_replace_deployments()
        run([str(BIN / "stfn"), "deploy", "--no-worker"], self.project, env, timeout=300)
        for dep in ("retrain/retrain-scheduled", "monitor/watch"):
            run([str(BIN / "prefect"), "deployment", "pause", dep], self.project, env, timeout=120, check=False)

    def refuse_to_replace_deployments(self) -> None:
        """The soak deploys prefect.yaml's deployments under their usual names (the monitor flow runs
        `retrain/retrain-scheduled` by name): on a Prefect server where they exist on another pool
        (a team's own), it stops rather than replace them."""
        from prefect.client.orchestration import get_client

        theirs = []
        with get_client(sync_client=True) as client:
            for name in ("retrain/retrain-scheduled", "monitor/watch"):
                try:
                    dep = client.read_deployment_by_name(name)
                except Exception:  # noqa: BLE001 - not there: nothing to replace
                    continue
                if dep.work_pool_name != POOL:
                    theirs.append(f"{name} (pool {dep.work_pool_name})")
        if theirs:
            raise SystemExit(
                f"soak --external: this Prefect server already has {', '.join(theirs)}; the soak would replace "
                "them with its own. Run it against a staging Prefect server set up like production."
            )

    def start_worker(self) -> None:
        env = {
            **self.base_env(),
            **self.env,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "STFN_DEPLOY_ROOT": str(self.project),
        }
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115 - the worker's whole life
        self.procs["worker"] = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", "soak-worker"],
            cwd=self.project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    # -- the endpoint and its traffic -----------------------------------------------------------
    def start_endpoint(self, body: bytes) -> None:
        self._body = body
        self._serve()
        for target in (self._supervise, self._traffic):
            t = threading.Thread(target=target, daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def _serve(self) -> None:
        log = open(self.workdir / "serve.log", "ab")  # noqa: SIM115 - the process's life
        self.procs["serve"] = subprocess.Popen(
            [str(BIN / "stfn"), "serve", "--port", str(self.serve_port)],
            cwd=self.project,
            env={**self.base_env(), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._served_at = time.monotonic()

    def _supervise(self) -> None:
        """Restart `stfn serve` when it died; the endpoint is up from its first /ping after a start."""
        while not self._stop.is_set():
            proc = self.procs["serve"]
            if proc.poll() is not None:
                self.endpoint_up.clear()
                self._serve()
                continue
            if not self.endpoint_up.is_set():
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{self.serve_url}/ping", timeout=2).status_code == 200:
                        if self.downtime and self.downtime[-1]["seconds"] is None:
                            self.downtime[-1]["seconds"] = round(time.monotonic() - self.downtime[-1]["t0"], 2)
                        self.endpoint_up.set()
            time.sleep(0.2)

    def _traffic(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            up = self.endpoint_up.is_set()
            try:
                r = session.post(
                    f"{self.serve_url}/invocations",
                    data=self._body,
                    timeout=30,
                    headers={"Content-Type": "application/json"},
                )
                ok, why = r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                ok, why = False, type(exc).__name__
            if ok:
                self.requests["ok"] += 1
                self.answered_by = r.headers.get(VERSION_HEADER)
            elif up and self.endpoint_up.is_set():  # up before and after: a failure of a served endpoint
                self.requests["failed_while_up"] += 1
                self.requests["failures"].append({"at": time.time(), "why": why})
            else:
                self.requests["failed_while_down"] += 1
            time.sleep(0.25)  # ~4 requests a second: traffic all year, without taking a core from the year

    def kill_endpoint(self) -> int:
        """kill -9 of `stfn serve` (its process tree); the supervisor restarts it."""
        with self._killing:
            self.endpoint_up.clear()
            self.downtime.append({"cause": "kill endpoint", "t0": time.monotonic(), "seconds": None})
            return len(kill_tree(self.procs["serve"].pid))

    def follows(self, version: str | None, timeout: float = 30) -> float | None:
        """Seconds until the endpoint answers with `version` (None: not within `timeout`)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.answered_by == version:
                return round(time.monotonic() - t0, 1)
            time.sleep(0.25)
        return None

    def wait_endpoint(self, timeout: float = 180) -> None:
        if not self.endpoint_up.wait(timeout):
            raise RuntimeError(f"stfn serve did not answer /ping within {timeout} s: see {self.workdir / 'serve.log'}")

    # -- the inference log's disk ---------------------------------------------------------------
    def fill_disk(self) -> int:
        """Fill the inference log's disk with a file of zeros until it is full (ENOSPC)."""
        filler = self.log_mount / "filler"
        written = 0
        with open(filler, "wb") as f:
            chunk = b"\0" * 65536
            try:
                while True:
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
            except OSError:
                pass
        return written

    def free_disk(self) -> None:
        (self.log_mount / "filler").unlink(missing_ok=True)

    # -- the end --------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything started, each step whatever the others did; the databases go last."""
        try:
            self._stop.set()
            for t in self._threads:
                t.join(timeout=35)
            for name in ("serve", "worker"):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        kill_tree(proc.pid)
            if self.dbs and not self.external and self.project.is_dir():
                run([str(BIN / "stfn"), "servers", "stop"], self.project, self.base_env(), timeout=120, check=False)
        finally:
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.log_mount)], capture_output=True)
            if self.dbs and not self.keep:
                import psycopg2

                conn = psycopg2.connect(connect_timeout=3, **PG)
                conn.autocommit = True
                with conn.cursor() as cur:
                    for n in self.dbs:
                        cur.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
                conn.close()


# what a client of a team's servers reads from its environment (credentials travel in it, never in a
# command line): the tracking and Prefect API URLs, the MLflow user and password, Prefect's auth string
CLIENT_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_KEY",
)


def external_env() -> dict[str, str]:
    """The client settings of a team's own servers (`--external`), from this environment."""
    missing = [k for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL") if not os.environ.get(k)]
    if missing:
        raise SystemExit(f"soak --external: set {' and '.join(missing)} to the team's servers (see `make servers`)")
    env = {k: os.environ[k] for k in CLIENT_VARIABLES if os.environ.get(k)}
    env.setdefault("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])
    return env


def request_body(dataset: Path, n: int = 2) -> bytes:
    """A scoring request (MLflow's `inputs` protocol) of `n` test samples of the dataset."""
    from stfn.data import contract

    spec = contract.load_spec(dataset)
    samples = contract.read_parquet(dataset, contract.SAMPLES_FILE, spec.name)
    rows = np.flatnonzero(samples["split"].to_numpy() == "test")[:n]
    series = contract.series_array(
        contract.read_parquet(dataset, contract.SERIES_FILE, spec.name), samples["sample_id"].iloc[rows], spec
    )
    frames = np.asarray(contract.open_frames(dataset, spec)[rows])
    series = np.where(np.isnan(series), None, series)
    return json.dumps({"inputs": {"series": series.tolist(), "frames": frames.tolist()}}).encode()
