"""Watching the champion as a Prefect 3 flow, and retraining on its signal.

`monitor` checks a batch (a dataset folder) or, by default, the inference log of the last
`window_hours` against the champion's reference statistics (`stfn monitor`'s checks and report),
publishes the verdict as a Prefect artifact and emits a Prefect event (`stfn.monitor.alarm` or
`stfn.monitor.ok`, resource `stfn.dataset.<name>`). When a threshold is crossed by a labelled
batch of an ingested dataset, the batch is appended to the dataset as a new DVC version (`stfn
ingest --append`) and the retrain deployment is run once, with `run_deployment` (not waited
for): the retrain then trains on the data that set off the alarm, and the gate judges the
challenger on the current test split. An unlabelled batch (the inference log) only alerts:
retraining on unchanged data would only reproduce the champion. With `monitor.append: always`,
every labelled batch that passes validation is appended (a team that labels its traffic keeps all of
it); only the alarming ones run the retrain, and the scheduled retrain trains on the rest.

The trigger is `run_deployment`, not an automation on the event: it needs nothing configured on
the server (an automation is server-side state a fresh `make deploy` would have to create and
keep in step), it is tested here against a real server and worker, and the flow run it creates is
linked to the alarm that caused it (tag `triggered-by-monitor`). The event is still emitted, for
teams that want their own automations (a Slack message on `stfn.monitor.alarm`, say). A second
alarm while a retrain is queued or running runs no second one: its batch is appended and that
retrain (or the next) trains on it; the retrain deployment's concurrency limit of 1 with
CANCEL_NEW is the backstop for runs from elsewhere (the cron, a manual run).

Deployed by `prefect.yaml` as `monitor/watch` (`make deploy`), daily on the inference log by
default (params.yaml `monitor.cron`); a batch is checked with
`prefect deployment run monitor/watch -p path=/data/incoming/batch-0412`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.deployments import run_deployment
from prefect.events import emit_event

from stfn import reports
from stfn.config import Paths, load_params
from stfn.errors import DataValidationError
from stfn.fileio import dir_md5
from stfn.stages.ingest import append
from stfn.stages.monitor import monitor as check
from stfn.stages.prepare import BUILTIN

RETRAIN = "retrain/retrain-scheduled"  # prefect.yaml's retrain deployment


@task(name="check-batch", cache_policy=NONE)
def check_batch(overrides: list[str], root: str, path: str, since: datetime | None) -> dict[str, Any]:
    paths = Paths(Path(root))
    return check(load_params(paths.params_file, overrides), paths, Path(path), since=since)


@task(name="append-batch", cache_policy=NONE)
def append_batch(overrides: list[str], root: str, path: str, dataset: str) -> dict[str, Any]:
    """What was appended; {"refused": why} for a batch the dataset's validation refuses (nothing
    changed): an outcome of the check, not a failure of the task."""
    paths = Paths(Path(root))
    try:
        return append(load_params(paths.params_file, overrides), paths, Path(path), dataset)
    except DataValidationError as exc:
        first = next((line.strip(" -") for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        return {"refused": first[:300]}


@task(name="queued-retrain", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def queued_retrain() -> str | None:
    """A run of the retrain deployment already pending or running, or scheduled to start within a
    minute (not the cron's future ones): it, or the next, trains on the batch just appended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    soon = datetime.now(UTC) + timedelta(minutes=1)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(RETRAIN)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED", "PENDING", "RUNNING"]))
            ),
        )
    for run in runs:
        if run.state_type.value != "SCHEDULED" or (run.expected_start_time and run.expected_start_time <= soon):
            return str(run.id)
    return None


@task(name="run-retrain", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def run_retrain(dataset: str, root: str, batch_md5: str) -> str:
    """One flow run of the retrain deployment, not waited for; the batch's md5 as idempotency key,
    so the same batch checked twice asks for one retrain."""
    run = run_deployment(
        name=RETRAIN,
        parameters={"dataset": dataset, "root": root},
        timeout=0,
        as_subflow=False,
        tags=["triggered-by-monitor"],
        idempotency_key=f"monitor-{dataset}-{batch_md5}",
    )
    return str(run.id)


def _append(overrides: list[str], root: str, source: Path, name: str) -> tuple[dict[str, Any] | None, str]:
    """Append the batch, or say why not: the monitor judges any batch it can read (a sensor that
    dropped a third of its readings included), the dataset takes only what its contract allows
    (`data.max_missing_ratio`). Returns (what was appended or None, "" or the reason)."""
    out = append_batch(overrides, root, str(source), name)
    if "refused" in out:
        return None, f"; not appended to {name}: the batch fails the dataset's validation ({out['refused']})"
    return out, ""


@flow(name="monitor")
def monitor(
    path: str | None = None,
    dataset: str | None = None,
    window_hours: float | None = None,
    overrides: list[str] | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Check a batch (default: the inference log of the last `window_hours`, params.yaml's
    `monitor.window_hours` unless given) against the champion;
    on an alarm from a labelled batch, append it to the dataset and run the retrain deployment."""
    root = str(Path(root).resolve()) if root else str(Path.cwd())
    overrides = list(overrides or []) + ([f"data.dataset={dataset}"] if dataset else [])
    paths = Paths(Path(root))
    params = load_params(paths.params_file, overrides)
    name = paths.dataset_name(params.data.dataset)
    source = Path(path) if path else paths.inference_log(name)
    hours = window_hours if window_hours is not None else params.monitor.window_hours
    since = datetime.now(UTC) - timedelta(hours=hours) if path is None else None
    report = check_batch(overrides, root, str(source), since)
    create_markdown_artifact(
        reports.monitoring_markdown(report), key=f"{name}-monitoring", description=f"Monitoring of {name}"
    )
    emit_event(
        event="stfn.monitor.alarm" if report["alarm"] else "stfn.monitor.ok",
        resource={"prefect.resource.id": f"stfn.dataset.{name}", "prefect.resource.name": name},
        payload={"crossed": report["crossed"], "summary": report["summary"], "report": report["html"]},
    )
    out: dict[str, Any] = {"report": report, "appended": None, "retrain_flow_run": None}
    keep_all = params.monitor.append == "always" and report["labelled"] and name not in BUILTIN
    if not report["alarm"]:
        out["why"] = "no threshold crossed"
        if keep_all:
            out["appended"], refused = _append(overrides, root, source, name)
            out["why"] += refused or f"; appended to {name} (monitor.append: always)"
    elif not report["labelled"]:
        out["why"] = "an unlabelled batch only alerts: retraining on unchanged data would reproduce the champion"
    elif name in BUILTIN:
        out["why"] = f"{name} is generated from params.yaml and cannot take the batch: alert only"
    elif not params.monitor.retrain:
        out["why"] = "monitor.retrain is off: alert only"
        if keep_all:
            out["appended"], refused = _append(overrides, root, source, name)
            out["why"] += refused or f"; appended to {name} (monitor.append: always), no retrain"
    else:
        out["appended"], refused = _append(overrides, root, source, name)
        queued = None if refused else queued_retrain()
        if refused:
            out["why"] = "alarm on a labelled batch" + refused + ": no retrain"
        elif queued:
            out["why"] = f"alarm on a labelled batch: appended to {name}; {RETRAIN} run {queued} is already under way"
        else:
            out["retrain_flow_run"] = run_retrain(name, root, dir_md5(source))
            out["why"] = f"alarm on a labelled batch: appended to {name}, {RETRAIN} run {out['retrain_flow_run']}"
    log = get_run_logger()
    (log.warning if report["alarm"] else log.info)("%s (flow run %s)", out["why"], runtime.flow_run.id)
    return out


if __name__ == "__main__":
    monitor()
