"""`stfn deploy` / `make deploy`: the work pool(s), the deployments of `prefect.yaml` with the
schedule from `params.yaml`, and a process worker — against a real Prefect server
(`PREFECT_API_URL`, or the one `stfn servers start` recorded). With a server that wants basic auth
(`stfn servers start --auth`), the `prefect` commands and the worker send PREFECT_API_AUTH_STRING
from our environment: each gets, by environment, only what `servers.child_env` gives its role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from stfn.config import Params, Paths
from stfn.ops import servers
from stfn.tracking import scrub_uri

TEMPLATES = Path("deploy") / "work-pools"
# the base job template of each pool type this project deploys to
POOL_TEMPLATES = {"process": "process.json", "docker": "docker-gpu.json", "kubernetes": "kubernetes-gpu.json"}


def pool_template(root: Path, pool_type: str) -> Path:
    return root / TEMPLATES / POOL_TEMPLATES[pool_type]


def _prefect(args: list[str], settings: dict[str, str], cwd: Path) -> str:
    """`prefect ARGS` as a Prefect client: `settings` over the part of our environment a client gets."""
    exe = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.run(
        [exe, "--no-prompt", *args],
        cwd=cwd,
        env=servers.child_env("prefect-client", settings),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        # its output may quote PREFECT_API_URL: the passwords of its URLs and our secrets masked
        tail = servers.mask(proc.stdout[-1500:] + proc.stderr[-1500:])
        hint = ""
        if "Unauthorized" in tail:  # httpx: "Client error '401 Unauthorized' for url ..."
            hint = (
                "\nthe Prefect server wants basic auth (`stfn servers start --auth`): set PREFECT_API_AUTH_STRING "
                "to its user:password"
            )
        raise RuntimeError(f"`prefect {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}{hint}")
    return proc.stdout


def api_url(paths: Paths) -> str:
    """The Prefect server to deploy to: PREFECT_API_URL, else the one `stfn servers start` runs."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    record = paths.state / "servers" / "prefect.json"
    if record.is_file():
        return json.loads(record.read_text())["url"]
    raise RuntimeError(
        "no Prefect server: deployments and workers need one. Start one with `make servers` "
        "(or set PREFECT_API_URL to your team's server) and run `make deploy` again"
    )


def deploy(params: Params, paths: Paths, start_worker: bool = True) -> dict[str, Any]:
    """Create/refresh the work pool(s), deploy `retrain-scheduled`, `watch`, `trials` (and `train` on that pool when
    `train.work_pool` is set), optionally start a process worker for the retrain pool. The URLs
    it returns (to be printed) have their passwords masked; the worker gets them whole, in its
    environment."""
    url = api_url(paths)
    env = {  # for `prefect deploy`: prefect.yaml's {{ $STFN_* }}
        "PREFECT_API_URL": url,
        "STFN_DEPLOY_ROOT": str(paths.root),
        "STFN_RETRAIN_POOL": params.retrain.work_pool,
        "STFN_RETRAIN_CRON": params.retrain.cron,
        "STFN_RETRAIN_TIMEZONE": params.retrain.timezone,
        "STFN_MONITOR_CRON": params.monitor.cron,
        "STFN_TRAIN_POOL": params.train.work_pool,
        "STFN_TUNE_POOL": params.tune.work_pool or params.retrain.work_pool,
        "STFN_CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
        # the training pool's device: cuda unless told otherwise (STFN_TRAIN_DEVICE=cpu for a CPU pool)
        "STFN_TRAIN_DEVICE": os.environ.get("STFN_TRAIN_DEVICE") or ("cuda" if params.train.work_pool else ""),
    }
    pools = {params.retrain.work_pool: "process"}  # the retrain flow itself runs on a process worker
    pools.setdefault(params.tune.work_pool or params.retrain.work_pool, "process")  # stfn tune --workers
    if params.train.work_pool:
        if pools.get(params.train.work_pool, params.train.work_pool_type) != params.train.work_pool_type:
            raise RuntimeError(
                f"params.yaml: train.work_pool '{params.train.work_pool}' is also retrain.work_pool (a process "
                f"pool) but train.work_pool_type is {params.train.work_pool_type}: give training its own pool"
            )
        pools[params.train.work_pool] = params.train.work_pool_type
    for pool, kind in pools.items():
        args = ["work-pool", "create", pool, "--type", kind, "--overwrite"]
        template = pool_template(paths.root, kind)
        if template.is_file():
            args += ["--base-job-template", str(template)]
        elif kind != "process":
            raise RuntimeError(f"{template} is missing: the {kind} pool's base job template (GPU requests)")
        _prefect(args, env, paths.root)
    names = ["retrain-scheduled", "watch", "trials"] + (["train"] if params.train.work_pool else [])
    _prefect(["deploy", *[a for n in names for a in ("-n", n)]], env, paths.root)
    out: dict[str, Any] = {
        "api_url": scrub_uri(url),
        "auth": bool(os.environ.get("PREFECT_API_AUTH_STRING")),
        "pools": [f"{p} ({k})" for p, k in pools.items()],
        "deployments": ["retrain/retrain-scheduled", "monitor/watch", "tune/trials"]
        + [f"training-pipeline/{n}" for n in names[3:]],
        "schedule": f"{params.retrain.cron} ({params.retrain.timezone})",
        "monitor_schedule": f"{params.monitor.cron} ({params.retrain.timezone})",
    }
    if start_worker:
        worker_env = {"PREFECT_API_URL": url}
        # scheduled runs log where you point them, else to the team MLflow server `make servers` runs
        tracking = os.environ.get("MLFLOW_TRACKING_URI") or servers.recorded_url(paths, "mlflow")
        if tracking:
            worker_env["MLFLOW_TRACKING_URI"] = tracking
        out["tracking_uri"] = (
            scrub_uri(tracking) if tracking else f"the project's own store ({paths.mlflow_dir / 'mlflow.db'})"
        )
        out["worker"] = servers.start_worker(paths, params.retrain.work_pool, worker_env)
    return out
