"""How `stfn tune` scales with workers: trials per hour of one worker against two, on fixed-cost
trials, side by side in one run.

    python benchmarks/tune_scaling.py [--trials 6] [--repeats 3] [--n-train 800]

Fixed cost: a random sampler over the learning rate only (the model's size and the epochs fixed:
`train.epochs` 3, no pruning), the same seeds in every repeat, one torch thread per worker
(`train.num_threads` 1, OMP_NUM_THREADS=1). Each worker is a process running `python -m
stfn.stages.tune --study S --total N --worker K` — the code each `tune/trials` flow run runs,
without Prefect's dispatch — against one study in a fresh PostgreSQL database (127.0.0.1:5432, the
team-mode storage) on features made once. Per repeat: one worker for `--trials` trials, then two
workers for twice as many. Trials per hour are counted two ways: over the wall time of the
workers' processes (their start-up included), and over the study's own span (first trial started
to last trial finished, from Optuna's timestamps). Each trial's share of time spent training is
its `train_seconds` (stfn.training.fit) over its duration. Writes docs/data/tune_scaling.json
(the docs' Tuning page is generated from it), with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import REPO, machine, now, project, table

from stfn.config import Paths, load_params
from stfn.stages.featurize import featurize
from stfn.stages.prepare import prepare
from stfn.stages.validate import validate

OUT = REPO / "docs" / "data" / "tune_scaling.json"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def database() -> str:
    import psycopg2

    name = f"stfn_bench_tune_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


def drop(name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def run_workers(root: Path, storage: str, study: str, workers: int, total: int) -> float:
    """`workers` processes on one study until it holds `total` finished trials; their wall seconds."""
    env = {**os.environ, "STFN_TUNE_STORAGE": storage, "OMP_NUM_THREADS": "1", "STFN_PROJECT_ROOT": str(root)}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stfn.stages.tune", "--study", study, "--total", str(total), "--worker", str(k)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for k in range(1, workers + 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            sys.exit(f"a worker failed (exit {p.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0


def measure(storage: str, study: str, wall: float) -> dict:
    import optuna

    trials = [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    shares = [t.user_attrs["train_seconds"] / (t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return {
        "trials": len(trials),
        "wall_seconds": round(wall, 1),
        "span_seconds": round(span, 1),
        "per_hour_wall": round(len(trials) / wall * 3600, 1),
        "per_hour_span": round(len(trials) / span * 3600, 1),
        "training_share": round(statistics.median(shares), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6, help="trials of the one-worker study (two workers: twice as many)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=800)
    a = ap.parse_args()
    space = {"train.lr": {"low": 0.001, "high": 0.01, "log": True}}
    root = project("tune-scaling", a.n_train, **{"train.epochs": 3, "train.num_threads": 1, "tune.space": space,
                                                 "tune.sampler": "random", "tune.pruner": "none"})  # fmt: skip
    params, paths = load_params(root / "params.yaml"), Paths(root)
    prepare(params, paths)
    featurize(params, paths, validate(params, paths)["data_md5"])
    db = database()
    storage = f"{PG}/{db}"
    rows = []
    try:
        for r in range(a.repeats):
            one = measure(storage, f"one-{r}", run_workers(root, storage, f"one-{r}", 1, a.trials))
            two = measure(storage, f"two-{r}", run_workers(root, storage, f"two-{r}", 2, 2 * a.trials))
            rows.append({"repeat": r, "one": one, "two": two,
                         "ratio_wall": round(two["per_hour_wall"] / one["per_hour_wall"], 3),
                         "ratio_span": round(two["per_hour_span"] / one["per_hour_span"], 3)})  # fmt: skip
            last = rows[-1]
            print(
                f"repeat {r + 1}/{a.repeats}: one {one['per_hour_span']:.0f}/h, two {two['per_hour_span']:.0f}/h "
                f"(x{last['ratio_span']:.2f} over the study's span, x{last['ratio_wall']:.2f} wall)",
                flush=True,
            )
    finally:
        drop(db)
    payload = {
        "command": "python benchmarks/tune_scaling.py " + " ".join(sys.argv[1:]),
        "trials": a.trials,
        "n_train": a.n_train,
        "epochs": 3,
        "rows": rows,
        "median_ratio_span": statistics.median(r["ratio_span"] for r in rows),
        "median_ratio_wall": statistics.median(r["ratio_wall"] for r in rows),
        "median_training_share": statistics.median(r[k]["training_share"] for r in rows for k in ("one", "two")),
        "cpus": os.cpu_count(),
        "machine": machine(),
        "date": now(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=1) + "\n")
    print(
        table(
            "trials per hour, one worker against two (medians over the repeats)",
            [
                ("over the study's span", f"{payload['median_ratio_span']:.2f}x"),
                ("over the workers' wall time", f"{payload['median_ratio_wall']:.2f}x"),
                ("each trial's share spent training", f"{payload['median_training_share']:.0%}"),
            ],
            ("measure", "two / one"),
        )
    )
    print(f"written to {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
