"""Helpers of the benchmarks: a project with a generated dataset of a given size, timing."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from stfn.efficiency import cpu, machine, now  # noqa: F401 (the benchmarks' snapshots record them)
from stfn.runtime import configure_environment

REPO = Path(__file__).resolve().parents[1]
STATE = Path(tempfile.mkdtemp(prefix="stfn-bench-"))
# the settings every `stfn` command applies (state under STATE/.stfn, telemetry off, Prefect's 120 s
# start-up timeout for its temporary API: without it a slow day's start timed out with a traceback)
configure_environment(STATE)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{STATE / 'mlflow' / 'mlflow.db'}")
(STATE / "mlflow").mkdir(parents=True, exist_ok=True)


def project(name: str, n_train: int, **overrides) -> Path:
    """A project folder whose params.yaml is the repo's with `n_train` training samples."""
    root = STATE / name
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    md = params["prepare"]["moving_digits"]
    md.update(n_train=n_train, n_val=max(64, n_train // 8), n_test=max(64, n_train // 8))
    for key, value in overrides.items():
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_of(fn: Callable[[], float], rounds: int) -> float:
    """The best (highest) of several throughput measurements: the least disturbed by neighbours."""
    return max(fn() for _ in range(rounds))


def table(title: str, rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([f"\n{title}", line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
