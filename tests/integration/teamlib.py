"""Helpers of the team-mode tests: free ports, running the `stfn` command, PostgreSQL settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stfn_cmd(cwd: Path, env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env}
    if "MLFLOW_TRACKING_URI" in env and "MLFLOW_REGISTRY_URI" not in env:
        # mlflow.set_registry_uri() in this process exports MLFLOW_REGISTRY_URI: do not inherit it
        full["MLFLOW_REGISTRY_URI"] = env["MLFLOW_TRACKING_URI"]
    argv = [str(BIN / "stfn"), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=full, timeout=timeout)


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
