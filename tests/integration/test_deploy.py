"""Scheduled retraining for real: a Prefect server and an MLflow server on PostgreSQL (free
loopback ports, shared by these tests), `stfn deploy` (work pools + prefect.yaml deployments with
the cron schedule from params.yaml), scheduled runs exist, one run triggered and executed by a real
process worker that hands training to a second pool's worker: COMPLETED, a new model version with
lineage tags, the alias decided by the gate. (Training inside the retrain run itself, with no
train pool, is tests/integration/test_retrain.py's, in-process.)"""

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


def _copy_project(dst: Path) -> None:
    shutil.copy2(REPO / "prefect.yaml", dst / "prefect.yaml")
    shutil.copytree(REPO / "deploy", dst / "deploy")
    shutil.copytree(REPO / "flows", dst / "flows", ignore=shutil.ignore_patterns("__pycache__"))


async def _pool(api_url: str, name: str):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        return await client.read_work_pool(name)


@pytest.mark.slow
@pytest.mark.integration
def test_deploy_puts_training_on_a_docker_gpu_pool(tmp_path, team_servers, write_tiny_params):
    """train.work_pool_type=docker: the pool is made from deploy/work-pools/docker-gpu.json (GPU
    device request) and `training-pipeline/train` is deployed on it with device cuda. No Docker
    daemon here: the worker side is checked by tests/code/test_work_pool_templates.py."""
    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    env = team_servers["client_env"]
    write_tiny_params(
        tmp_path / "params.yaml",
        **{"retrain.work_pool": "stfn-cpu-t", "train.work_pool": "stfn-gpu-t", "train.work_pool_type": "docker"},
    )
    _copy_project(tmp_path)
    deployed = stfn_cmd(tmp_path, env, "deploy", "--no-worker")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    assert "training-pipeline/train" in deployed.stdout
    gpu = asyncio.run(_pool(env["PREFECT_API_URL"], "stfn-gpu-t"))
    cpu = asyncio.run(_pool(env["PREFECT_API_URL"], "stfn-cpu-t"))
    assert (gpu.type, cpu.type) == ("docker", "process")
    requests = gpu.base_job_template["variables"]["properties"]["container_create_kwargs"]["default"]
    assert requests["device_requests"][0]["capabilities"] == [["gpu"]]
    dep, _, _ = asyncio.run(_runs(env["PREFECT_API_URL"], "training-pipeline/train"))
    assert dep.work_pool_name == "stfn-gpu-t" and dep.job_variables["env"]["STFN_TRAIN_DEVICE"] == "cuda"


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group, SIGKILL after 15 s: nothing outlives the test."""
    from stfn.ops.servers import stop_group

    stop_group(proc.pid, 15)
    proc.poll()


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_sends_training_to_its_own_pool(tmp_path, team_servers, write_tiny_params, monkeypatch):
    """train.work_pool set: the retrain run (on the retrain pool's worker) calls
    run_deployment("training-pipeline/train"), which a second pool's worker executes with its job
    variables (STFN_TRAIN_DEVICE=cpu here, as a CPU host would); the outcome comes back through MLflow."""
    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    env = team_servers["client_env"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])
    write_tiny_params(
        tmp_path / "params.yaml",
        **{"retrain.work_pool": "stfn-retrain-t", "train.work_pool": "stfn-train-t", "retrain.cron": "0 3 * * 1"},
    )
    _copy_project(tmp_path)
    deployed = stfn_cmd(tmp_path, {**env, "STFN_TRAIN_DEVICE": "cpu"}, "deploy", "--no-worker")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    assert "retrain/retrain-scheduled" in deployed.stdout
    dep, _, _ = asyncio.run(_runs(env["PREFECT_API_URL"], "training-pipeline/train"))
    assert dep.work_pool_name == "stfn-train-t" and dep.job_variables["env"]["STFN_TRAIN_DEVICE"] == "cpu"

    # the cron schedule from params.yaml: the server's scheduler makes the runs within seconds
    for _ in range(60):
        retrain, scheduled, _ = asyncio.run(_runs(env["PREFECT_API_URL"], "retrain/retrain-scheduled"))
        if scheduled:
            break
        time.sleep(0.5)
    assert retrain.work_pool_name == "stfn-retrain-t" and retrain.schedules[0].schedule.cron == "0 3 * * 1"
    assert retrain.global_concurrency_limit.limit == 1  # never two retrains at once
    assert str(retrain.concurrency_options.collision_strategy.value) == "CANCEL_NEW"
    assert retrain.parameters["root"] == str(tmp_path)
    assert len(scheduled) >= 1 and all(r.expected_start_time.weekday() == 0 for r in scheduled)  # Mondays

    prefect = str(BIN / "prefect")
    log = open(tmp_path / "train-worker.log", "w")
    train_worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", "stfn-train-t", "--limit", "1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        trig = subprocess.run(
            [prefect, "deployment", "run", "retrain/retrain-scheduled"], capture_output=True, text=True, timeout=120
        )
        assert trig.returncode == 0, trig.stderr
        flow_run_id = next(line.split()[-1] for line in trig.stdout.splitlines() if "UUID" in line)
        worker = subprocess.run(
            [prefect, "worker", "start", "--pool", "stfn-retrain-t", "--run-once"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    finally:
        _stop_group(train_worker)
        log.close()
    _, _, run = asyncio.run(_runs(env["PREFECT_API_URL"], "retrain/retrain-scheduled", flow_run_id))
    train_log = (tmp_path / "train-worker.log").read_text()
    assert run.state.is_completed(), (run.state, worker.stdout[-3000:], train_log[-3000:])

    from mlflow import MlflowClient

    url = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    (mv,) = client.search_model_versions("name='stfn-moving-digits'")
    train_run = client.get_run(mv.run_id)
    assert train_run.data.params["train.device"] == "cpu"  # the job variable reached the training run
    assert mv.tags["prefect_flow_run_id"] != flow_run_id  # trained by the child run on the other pool
    assert {"git_sha", "data_md5", "params_hash", "prefect_flow_run_id", "test_set_md5"} <= set(mv.tags)
    assert mv.tags["decision"] == "promoted" and mv.tags["decision_reason"] == "no champion yet"
    assert str(client.get_model_version_by_alias("stfn-moving-digits", "champion").version) == str(mv.version)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["retrain"]["work_pool"] == "stfn-retrain-t"
