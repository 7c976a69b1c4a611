"""`python -m soak` (`make soak`): a simulated year of team mode, with faults, and the invariants
that must hold at its end. Prints the seed first (the same seed replays the same year), a line
per week, then the invariants as a table; exits 1 naming any that failed.

    python -m soak --weeks 52                 # make soak
    python -m soak --weeks 4 --seed 11        # a short year (make test-all runs one)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

import yaml

from soak import world
from soak.cluster import BIN, REPO, Cluster, request_body, run
from stfn.config import apply_overrides

SETTINGS = {  # the soak's params.yaml: the repo's, with these changed
    "data.dataset": world.DATASET,  # --external: soak-<seed>-<random>
    "retrain.work_pool": "soak-pool",
    "monitor.append": "always",  # every valid labelled batch becomes data; alarms also retrain
    "serve.follow_seconds": 1,
    "serve.log_flush_seconds": 1,
    "serve.log_max_mb": 2,  # on a disk of 8 MB (the tmpfs the disk-full fault fills)
    "model.dim": 32,
    "model.attention_hidden": 32,
}


def soak_params() -> dict:
    return apply_overrides(
        yaml.safe_load((REPO / "params.yaml").read_text()), [f"{k}={v}" for k, v in SETTINGS.items()]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=52)
    ap.add_argument("--seed", type=int, default=None, help="default: a new one, printed")
    ap.add_argument("--batch", type=int, default=200, help="samples in a week's batch")
    ap.add_argument("--initial", type=int, default=world.WORLD.n_train, help="training samples the year starts with")
    ap.add_argument("--retrain-every", type=int, default=4, help="the cron's retrain, every N weeks")
    ap.add_argument("--workdir", type=Path, default=None, help="default: .stfn/soak/seed-<seed>")
    ap.add_argument("--snapshot", type=Path, default=None, help="also write the report here (docs/data/soak.json)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and the project (its data versions)")
    ap.add_argument(
        "--external",
        action="store_true",
        help="on the team's own servers (MLFLOW_TRACKING_URI, PREFECT_API_URL and their credentials from "
        "the environment): no MLflow server kill, a dataset and model named after the seed",
    )
    ap.add_argument("--no-disk-fault", action="store_true", help="no tmpfs for the inference log (it needs root)")
    ap.add_argument("--min-promotions", type=int, default=None, help="default: 1 per 13 weeks, at least 1")
    ap.add_argument("--plot", type=Path, default=None, help="only redraw the picture of a report (REPORT.png)")
    a = ap.parse_args(argv)
    if a.plot:
        return replot(a.plot)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(
        f"soak: seed {seed} ({a.weeks} weeks; replay with `python -m soak --weeks {a.weeks} --seed {seed}`)", flush=True
    )
    workdir = (a.workdir or Path(".stfn") / "soak" / f"seed-{seed}").resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    params = soak_params()
    if a.external:  # never the name of another soak's (or anyone's) model on shared servers
        params["data"]["dataset"] = f"soak-{seed}-{uuid.uuid4().hex[:6]}"
    skip = frozenset({"kill mlflow"} if a.external else ()) | frozenset({"disk full"} if a.no_disk_fault else ())
    weeks = world.plan(seed, a.weeks, a.retrain_every, skip)
    if skip:
        print(f"soak: without {', '.join(sorted(skip))}", flush=True)
    cluster = Cluster(workdir, params, keep=a.keep, external=a.external)
    t0 = time.monotonic()
    try:
        return year(cluster, params, weeks, seed, a, t0)
    finally:
        cluster.close()
        if not a.keep:  # the report, the picture and the logs stay; the year's data (gigabytes) goes
            for part in ("project", "dvc-remote", "incoming", "restore"):
                shutil.rmtree(workdir / part, ignore_errors=True)


def year(cluster: Cluster, params: dict, weeks: list[world.Week], seed: int, a, t0: float) -> int:
    cluster.databases()
    cluster.project_files(lambda folder: world.initial(folder, a.initial))
    cluster.start_servers()
    os.environ.update(cluster.env)  # before prefect and mlflow are imported: this process is a client too
    env = {**cluster.base_env(), **cluster.env}
    run([str(BIN / "stfn"), "run"], cluster.project, env, timeout=1800)
    m = json.loads((cluster.project / "reports" / "metrics.json").read_text())
    print(
        f"week  0  the first champion: v{m.get('registered_version')}, test accuracy "
        f"{m['test']['accuracy']:.3f} on {m['n_test']} samples ({m['n_train']} trained on)",
        flush=True,
    )
    cluster.deploy()
    cluster.start_worker()
    if not a.no_disk_fault:
        cluster.mount_log_disk()
    cluster.start_endpoint(request_body(cluster.project / "data" / "raw" / cluster.name))
    cluster.wait_endpoint()

    from soak import checks
    from soak.year import Year

    y = Year(cluster, seed, weeks, a.batch)
    import pandas as pd

    series = pd.read_parquet(cluster.project / "data" / "raw" / cluster.name / "series.parquet")
    y.offset_std = float(series["zone-0"].std())
    y.observe(0, "first run")
    y.disk.append({"week": 0, **y.disk_use()})
    y.run_year()
    min_promotions = a.min_promotions if a.min_promotions is not None else max(1, len(weeks) // 13)
    rows = checks.invariants(y, params, min_promotions, bounded_mb=50)
    print("\n" + checks.table(rows), flush=True)
    from stfn.efficiency import machine, now

    report = {
        "machine": machine(),
        "date": now(),
        "seed": seed,
        "weeks": len(weeks),
        "batch": a.batch,
        "command": f"python -m soak --weeks {len(weeks)} --seed {seed}",
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "settings": SETTINGS,
        "invariants": rows,
        "rows": y.rows,
        "faults": y.faults,
        "moves": y.moves,
        "versions": y.versions,
        "disk": y.disk,
        "requests": {k: v for k, v in cluster.requests.items() if k != "failures"},
        "downtime": [{k: v for k, v in d.items() if k != "t0"} for d in cluster.downtime],
    }
    out = cluster.workdir / "report.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    checks.plot(y, cluster.workdir / "soak.png")
    if a.snapshot:
        a.snapshot.parent.mkdir(parents=True, exist_ok=True)
        a.snapshot.write_text(json.dumps(report, indent=1, default=str))
        shutil.copy2(cluster.workdir / "soak.png", a.snapshot.with_suffix(".png"))
    failed = [r["invariant"] for r in rows if not r["passed"]]
    print(f"\nsoak: {len(weeks)} weeks in {report['minutes']} min, seed {seed}; report {out}", flush=True)
    if failed:
        print("soak: FAILED: " + "; ".join(failed), file=sys.stderr, flush=True)
        return 1
    return 0


def replot(report: Path) -> int:
    """The picture of a year, redrawn from its report alone."""
    from types import SimpleNamespace

    from soak import checks

    d = json.loads(report.read_text())
    year = SimpleNamespace(rows=d["rows"], moves=d["moves"], faults=d["faults"], disk=d["disk"], seed=d["seed"])
    print(checks.plot(year, report.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
