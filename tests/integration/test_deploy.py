"""Scheduled retraining for real: a Prefect server and an MLflow server on PostgreSQL (free
loopback ports), `stfn deploy` (work pool + prefect.yaml deployment with the cron schedule from
params.yaml), scheduled runs exist, one run triggered and executed by a real process worker:
COMPLETED, a new model version with lineage tags, the alias decided by the gate."""

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from teamlib import BIN, stfn_cmd

REPO = Path(__file__).resolve().parents[2]


async def _runs(api_url: str, deployment: str, flow_run_id: str | None = None):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    async with PrefectClient(api_url) as client:  # this server, whatever the process-wide settings say
        dep = await client.read_deployment_by_name(deployment)
        scheduled = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
        )
        run = await client.read_flow_run(flow_run_id) if flow_run_id else None
        return dep, scheduled, run


@pytest.mark.slow
@pytest.mark.integration
def test_deployed_retrain_runs_on_a_process_worker(tmp_path, team_servers, write_tiny_params, monkeypatch):
    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    env = team_servers["client_env"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])  # the worker's runs inherit these
    pool = "stfn-test-pool"
    write_tiny_params(tmp_path / "params.yaml", **{"retrain.work_pool": pool, "retrain.cron": "0 3 * * 1"})
    shutil.copy2(REPO / "prefect.yaml", tmp_path / "prefect.yaml")
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    shutil.copytree(REPO / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("__pycache__"))

    deployed = stfn_cmd(tmp_path, env, "deploy", "--no-worker")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    assert "retrain/retrain-scheduled" in deployed.stdout

    for _ in range(60):  # the server's scheduler makes the runs within seconds of the deploy
        dep, scheduled, _ = asyncio.run(_runs(env["PREFECT_API_URL"], "retrain/retrain-scheduled"))
        if scheduled:
            break
        time.sleep(0.5)
    assert dep.work_pool_name == pool and dep.schedules[0].schedule.cron == "0 3 * * 1"
    assert dep.global_concurrency_limit.limit == 1  # never two retrains at once
    assert str(dep.concurrency_options.collision_strategy.value) == "CANCEL_NEW"
    assert dep.parameters["root"] == str(tmp_path)
    assert len(scheduled) >= 1 and all(r.expected_start_time.weekday() == 0 for r in scheduled)  # Mondays

    prefect = str(BIN / "prefect")
    trig = subprocess.run(
        [prefect, "deployment", "run", "retrain/retrain-scheduled"], capture_output=True, text=True, timeout=120
    )
    assert trig.returncode == 0, trig.stderr
    flow_run_id = next(line.split()[-1] for line in trig.stdout.splitlines() if "UUID" in line)
    worker = subprocess.run(
        [prefect, "worker", "start", "--pool", pool, "--run-once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    _, _, run = asyncio.run(_runs(env["PREFECT_API_URL"], "retrain/retrain-scheduled", flow_run_id))
    assert run.state.is_completed(), (run.state, worker.stdout[-3000:])

    from mlflow import MlflowClient

    url = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=url, registry_uri=url)  # not the process-wide registry URI
    versions = client.search_model_versions("name='stfn-moving-digits'")
    assert len(versions) == 1
    mv = versions[0]
    assert {"git_sha", "data_md5", "params_hash", "prefect_flow_run_id", "test_set_md5"} <= set(mv.tags)
    assert mv.tags["decision"] == "promoted" and mv.tags["decision_reason"] == "no champion yet"
    assert str(client.get_model_version_by_alias("stfn-moving-digits", "champion").version) == str(mv.version)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["retrain"]["work_pool"] == pool
