"""`stfn tune --workers N` as Prefect 3 flow runs: each run of the `tune/trials` deployment
(prefect.yaml, on `tune.work_pool`) is one worker of a shared Optuna study. It makes the features
from the dataset (under its lock: one version), checks that version against the one the study
recorded (every trial judged on the same validation split, on whichever machine), then runs trials
until the study holds `total` finished ones, whoever ran them. Workers share only the study's
storage (STFN_TUNE_STORAGE: the team's PostgreSQL) and the MLflow server; a worker killed in the
middle of a trial stops its heartbeat, and the next trial started anywhere fails it and queues it
again (Optuna's RDB heartbeat and RetryHeartbeatStaleTrialCallback, stfn.stages.tune).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from stfn import tracking
from stfn.config import Paths, load_params
from stfn.stages import tune as stage
from stfn.stages.featurize import featurize
from stfn.stages.prepare import pinned, prepare
from stfn.stages.tune import tune
from stfn.stages.validate import validate


@flow(name="tune")
def tune_trials(
    study: str,
    total: int,
    worker: int = 0,
    overrides: list[str] | None = None,
    root: str | None = None,
    timeout_minutes: float | None = None,
) -> dict[str, Any]:
    """One worker of study `study`: trials until it holds `total` finished ones."""
    paths = Paths(Path(root).resolve() if root else Path.cwd())
    params = load_params(paths.params_file, overrides)
    with pinned(params, paths):
        prepare(params, paths)
        featurize(params, paths, validate(params, paths)["data_md5"])
    summary = tune(params, paths, study, timeout_minutes=timeout_minutes, total=total, worker=worker, write=False)
    return {k: v for k, v in summary.items() if k != "best"} | {"best": summary.get("best")}


def dispatch(
    params: Any, paths: Paths, study_name: str | None, trials: int, workers: int, overrides: list[str],
    on_progress: Any = None, timeout_minutes: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """`stfn tune --workers N`: open (or continue) the study here, on the features made here, then
    start N flow runs of `tune/trials` (their workers pull them: on any host of the pool) and
    follow the study until it holds `trials` more finished trials or every run has ended."""
    study, url = stage.start(params, paths, study_name)
    study_name = study.study_name
    if url.startswith("sqlite:"):
        where = "a SQLite file: workers on this host only (STFN_TUNE_STORAGE for a shared database)"
    else:
        where = tracking.scrub_uri(url)
    total = stage.finished(study) + trials
    runs = [
        run_deployment(
            name="tune/trials",
            parameters={
                "study": study_name,
                "total": total,
                "worker": i + 1,
                "overrides": overrides,
                "timeout_minutes": timeout_minutes,
                "root": str(paths.root),
            },  # fmt: skip
            timeout=0,
        )
        for i in range(workers)
    ]
    ids = [r.id for r in runs]
    with get_client(sync_client=True) as client:
        while True:
            done = stage.finished(study)
            states = [client.read_flow_run(i).state for i in ids]
            if on_progress:
                on_progress(done - (total - trials), trials, [s.type.value if s else "?" for s in states])
            ended = all(s is not None and s.is_final() for s in states)
            if done >= total or ended:
                break
            time.sleep(2)
        # the last trials land; a run whose worker was lost never ends: waited for a grace period
        deadline = time.monotonic() + params.tune.grace_seconds + 60
        while not all(s is not None and s.is_final() for s in states) and time.monotonic() < deadline:
            time.sleep(2)
            states = [client.read_flow_run(i).state for i in ids]
    failed = [str(i) for i, s in zip(ids, states, strict=True) if s is None or not s.is_completed()]
    stage.settle(study, params.tune.grace_seconds)  # a lost worker's trial: failed, not left running
    return {"study": study_name, "total": total, "flow_runs": [str(i) for i in ids], "failed_runs": failed,
            "storage": where}  # fmt: skip


if __name__ == "__main__":
    tune_trials()
