"""Retraining on the monitor's signal, for real: MLflow and Prefect servers on PostgreSQL
(shared with the other team-mode tests), `stfn deploy` (retrain-scheduled and monitor/watch on a
process pool), and a real process worker running what the deployments ask. A labelled batch from
the training distribution sets off nothing; a labelled batch whose sensor zone-0 reads 1.5x is
appended to the dataset as a new DVC version and runs exactly one retrain flow run, which trains
on it and registers a challenger; a second alarm while that retrain is queued appends its batch
and runs no second retrain; the Prefect UI shows them (a screenshot, to docs/screenshots/
with STFN_SCREENSHOTS=docs/screenshots)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from teamlib import BIN, stfn_cmd
from test_deploy import _copy_project

NAME = "watch-digits"


def batch(folder: Path, seed: int, n: int, prefix: str = "", n_other: int = 50) -> Path:
    """`n` + 2 `n_other` new videos from the generator, sample ids prefixed (a batch must not reuse
    the dataset's; its split column dropped: the append splits it like the dataset)."""
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    spec, samples, series, frames = make_moving_digits(
        MovingDigitsParams(n_train=n, n_val=n_other, n_test=n_other, seed=seed), name=NAME
    )
    samples["sample_id"] = prefix + samples["sample_id"]
    series["sample_id"] = prefix + series["sample_id"]
    write_dataset(folder, spec, samples.drop(columns="split") if prefix else samples, series, frames)
    return folder


async def _retrain_runs(api_url: str, before: frozenset = frozenset()) -> list:
    """The flow runs of retrain-scheduled that are not the cron's future ones, nor among `before`
    (the ones the deployment had already: these servers are shared with test_deploy.py, whose
    deployment of the same name ran retrains of its own)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with PrefectClient(api_url) as client:
        dep = await client.read_deployment_by_name("retrain/retrain-scheduled")
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        return [
            r
            for r in runs
            if r.id not in before and (r.state_type.value != "SCHEDULED" or "triggered-by-monitor" in r.tags)
        ]


def _watch(tmp_path: Path, path: Path) -> str:
    """`prefect deployment run monitor/watch -p path=...`, then one pass of the pool's worker."""
    prefect = str(BIN / "prefect")
    trig = subprocess.run(
        [prefect, "deployment", "run", "monitor/watch", "-p", f"path={path}", "-p", f"dataset={NAME}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trig.returncode == 0, trig.stderr
    _worker_once(tmp_path)
    return next(line.split()[-1] for line in trig.stdout.splitlines() if "UUID" in line)


def _worker_once(tmp_path: Path) -> None:
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", "stfn-watch-t", "--run-once"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.thorough
def test_a_shifted_labelled_batch_runs_one_retrain_a_clean_one_none(tmp_path, team_servers, write_tiny_params,
                                                                    monkeypatch, need):  # fmt: skip
    from prefect.client.orchestration import PrefectClient

    from mlflow import MlflowClient
    from stfn.ops import versioning

    assert team_servers["started"].returncode == 0, team_servers["started"].stderr
    env = team_servers["client_env"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": NAME, "retrain.work_pool": "stfn-watch-t"})
    _copy_project(tmp_path)
    versioning.dvc(tmp_path, "init", "--no-scm")
    batch(tmp_path / "data" / "raw" / NAME, seed=5, n=160, n_other=48)  # an ingested dataset, versioned by DVC
    versioning.dvc(tmp_path, "add", f"data/raw/{NAME}")
    dvc_file = tmp_path / "data" / "raw" / f"{NAME}.dvc"
    first_version = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    trained = stfn_cmd(tmp_path, env, "run")  # the champion, logged with its reference statistics
    assert trained.returncode == 0, trained.stderr[-3000:]
    first = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert first["promoted"]
    deployed = stfn_cmd(tmp_path, env, "deploy", "--no-worker")
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    assert "monitor/watch" in deployed.stdout

    api = env["PREFECT_API_URL"]
    before = frozenset(r.id for r in asyncio.run(_retrain_runs(api)))  # another test's, on the shared servers
    retrain_runs = lambda: asyncio.run(_retrain_runs(api, before))  # noqa: E731
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    clean_run = _watch(tmp_path, batch(tmp_path / "incoming" / "clean", seed=31, n=300, prefix="c31-"))
    assert retrain_runs() == []  # nothing crossed: no retrain
    assert yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] == first_version

    def shifted(name: str, seed: int, prefix: str) -> Path:
        folder = batch(tmp_path / "incoming" / name, seed=seed, n=300, prefix=prefix)
        series = pd.read_parquet(folder / "series.parquet")
        series["zone-0"] *= 1.5  # the sensor recalibrated to a new gain
        series.to_parquet(folder / "series.parquet", index=False)
        return folder

    gain_run = _watch(tmp_path, shifted("gain", 32, "g32-"))
    (retrain,) = retrain_runs()  # exactly one, made by the monitor run
    assert "triggered-by-monitor" in retrain.tags and retrain.parameters["dataset"] == NAME
    assert yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"] != first_version  # a new DVC version
    # a second alarm while that retrain is queued: its batch is appended too, and no second retrain
    second_run = _watch(tmp_path, shifted("gain-again", 33, "h33-"))
    assert [r.id for r in retrain_runs()] == [retrain.id]
    _worker_once(tmp_path)  # the worker runs the retrain

    versions = client.search_model_versions(f"name='stfn-{NAME}'")
    (mv,) = [v for v in versions if v.version != str(first["registered_version"])]  # the one challenger

    async def states():
        async with PrefectClient(api) as c:
            runs = [await c.read_flow_run(i) for i in (clean_run, gain_run, second_run)]
            retrains = await _retrain_runs(api, before)
            trained_by = await c.read_flow_run(mv.tags["prefect_flow_run_id"])  # the training-pipeline subflow
            parent = await c.read_task_run(trained_by.parent_task_run_id)
            return runs, retrains, parent.flow_run_id

    monitor_runs, retrains, parent = asyncio.run(states())
    assert all(r.state.is_completed() for r in monitor_runs), [r.state for r in monitor_runs]
    assert [r.state_type.value for r in retrains] == ["COMPLETED"], [r.state for r in retrains]
    assert str(parent) == str(retrain.id)  # the challenger was registered by the retrain the alarm ran
    # the worker ran the retrain in the project folder: its evaluation counts the appended samples
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["mlflow_run_id"] == mv.run_id and metrics["n_train"] > first["n_train"]
    samples = pd.read_parquet(tmp_path / "data" / "raw" / NAME / "samples.parquet")
    assert len(samples) == 256 + 400 + 400 and samples["sample_id"].str.startswith("g32-").sum() == 400  # both
    assert set(samples.loc[samples["sample_id"].str.startswith("g32-"), "split"]) == {"train", "val", "test"}

    # seen in the Prefect UI (a real browser): the two monitor runs and the retrain one of them ran
    from browserlib import check_prefect_ui, ensure_chromium

    from stfn.ops.servers import ui_of_api

    ensure_chromium(need)
    shots = Path(os.environ["STFN_SCREENSHOTS"]).resolve() if os.environ.get("STFN_SCREENSHOTS") else tmp_path
    check_prefect_ui(ui_of_api(api), shots, "monitor", "retrain", "training-pipeline")
