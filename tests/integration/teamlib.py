"""Helpers of the team-mode tests: free ports, running the `stfn` command, PostgreSQL settings."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(root: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`stfn serve ARGS` on a free port in project `root`, up (its /ping answers) within 120 s;
    stopped with SIGINT, as Ctrl-C does, on leaving. Yields (its URL, the process)."""
    port = free_port()
    log = open(root / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "stfn"), "serve", "--port", str(port), *args],
        cwd=root,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "serve.log").read_text()
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
            log.close()


def stfn_cmd(cwd: Path, env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    if "MLFLOW_TRACKING_URI" in env and "MLFLOW_REGISTRY_URI" not in env:
        # mlflow.set_registry_uri() in this process exports MLFLOW_REGISTRY_URI: do not inherit it
        full["MLFLOW_REGISTRY_URI"] = env["MLFLOW_TRACKING_URI"]
    argv = [str(BIN / "stfn"), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=full, timeout=timeout)


def stfn_in_terminal(cwd: Path, env: dict, *args: str, timeout: int = 600) -> tuple[int, str]:
    """Run `stfn` as a user does, in a pseudo-terminal (80x160): (exit code, what the terminal
    showed, escape sequences removed, redrawn lines split at carriage returns)."""
    import pty
    import re
    import select
    import time

    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TERM": "xterm-256color", "COLUMNS": "160",
            "LINES": "80", **env}  # fmt: skip
    full.pop("STFN_PROGRESS", None)
    if "MLFLOW_REGISTRY_URI" not in env:
        full["MLFLOW_REGISTRY_URI"] = full.get("MLFLOW_TRACKING_URI", "")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(BIN / "stfn"), *args], cwd=cwd, env=full, stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise TimeoutError(f"stfn {' '.join(args)} still running after {timeout} s")
        code = proc.wait(timeout=30)
    finally:
        os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text).replace("\r\n", "\n").replace("\r", "\n")
    return code, text


# a moving-digits variant small enough for a test and big enough to learn (test accuracy ~0.95)
LEARNING_DIGITS = {
    "prepare.moving_digits.n_train": 1600,
    "prepare.moving_digits.n_val": 160,
    "prepare.moving_digits.n_test": 200,
    "prepare.moving_digits.digits_per_video": 1,
    "prepare.moving_digits.frames": 4,
    "prepare.moving_digits.steps": 16,
    "train.epochs": 8,
    "train.batch_size": 32,
    "train.patience": 8,
    "model.dim": 32,
    "model.attention_hidden": 32,
}
