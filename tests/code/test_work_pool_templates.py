"""The base job templates of deploy/work-pools/: accepted by a real Prefect server (ephemeral API),
rendered by the real worker classes (prefect-docker, prefect-kubernetes) into what the worker would
hand to Docker / Kubernetes: a GPU device request, an nvidia.com/gpu limit."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from stfn.ops.deploy import POOL_TEMPLATES, pool_template

REPO = Path(__file__).resolve().parents[2]


def _default_template(kind: str) -> dict:
    if kind == "docker":
        from prefect_docker.worker import DockerWorker as Worker
    elif kind == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorker as Worker
    else:
        from prefect.workers.process import ProcessWorker as Worker
    return Worker.get_default_base_job_template()


async def _created_and_rendered(kind: str, values: dict):
    """Create a pool of `kind` with our template on the server, read it back, render `values`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    if kind == "docker":
        from prefect_docker.worker import DockerWorkerJobConfiguration as Config
    else:
        from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as Config
    template = json.loads(pool_template(REPO, kind).read_text())
    async with get_client() as client:
        pool = await client.create_work_pool(
            WorkPoolCreate(name=f"stfn-{kind}-{uuid.uuid4().hex[:6]}", type=kind, base_job_template=template)
        )
        stored = (await client.read_work_pool(pool.name)).base_job_template
        await client.delete_work_pool(pool.name)
    assert stored == template  # the server kept it as written
    return await Config.from_template_and_values(stored, values)


@pytest.mark.parametrize("kind", sorted(POOL_TEMPLATES))
def test_each_template_offers_every_variable_of_its_worker(kind):
    """Our templates extend the workers' own defaults: nothing a worker user expects is missing."""
    ours = json.loads(pool_template(REPO, kind).read_text())
    theirs = _default_template(kind)
    assert set(theirs["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(theirs["job_configuration"]) <= set(ours["job_configuration"])


def test_docker_template_requests_the_hosts_gpus_by_default():
    from docker.types import HostConfig

    cfg = asyncio.run(_created_and_rendered("docker", {}))
    assert cfg.image == "stfn-train:latest" and cfg.env["STFN_TRAIN_DEVICE"] == "cuda"
    # what prefect-docker passes on to docker-py's containers.create (API >= 1.40 for device requests)
    host = HostConfig(version="1.44", device_requests=cfg.container_create_kwargs["device_requests"])
    assert host["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]  # = docker run --gpus all
    one = {"device_requests": [{"driver": "nvidia", "device_ids": ["1"], "capabilities": [["gpu"]]}]}
    cfg = asyncio.run(_created_and_rendered("docker", {"container_create_kwargs": one, "image": "reg/stfn:2"}))
    host = HostConfig(version="1.44", device_requests=cfg.container_create_kwargs["device_requests"])
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["1"] and cfg.image == "reg/stfn:2"


def test_kubernetes_template_limits_nvidia_gpus_and_tolerates_gpu_nodes():
    cfg = asyncio.run(_created_and_rendered("kubernetes", {"gpu_limit": 2, "namespace": "ml"}))
    manifest = cfg.job_manifest
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["image"] == "stfn-train:latest" and manifest["metadata"]["namespace"] == "ml"
    default = asyncio.run(_created_and_rendered("kubernetes", {})).job_manifest["spec"]["template"]["spec"]
    assert default["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert default["containers"][0]["env"]["STFN_TRAIN_DEVICE"] == "cuda"  # a list of name/value once prepared
