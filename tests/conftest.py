"""Test isolation: every tracking store, Prefect home and cache lives in a temp folder.

The environment is set before anything imports Prefect or MLflow (they read it at import)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import NoReturn

_STATE = Path(tempfile.mkdtemp(prefix="stfn-tests-"))
os.environ.update(
    {
        "PREFECT_HOME": str(_STATE / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",  # no INFO lines into closed capture streams at exit
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "MLFLOW_TRACKING_URI": f"sqlite:///{_STATE / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "MPLBACKEND": "Agg",
        "GIT_PYTHON_REFRESH": "quiet",
        "STFN_TEST_STATE": str(_STATE),
    }
)
# On the pytest-xdist workers of `make test` (2 on 2 cores), one thread of torch / BLAS each, in the
# worker and the processes it starts: two workers of two threads each oversubscribed the cores, and
# a patches learning test took 80 s beside the other worker against ~11 s alone
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("STFN_PROJECT_ROOT", None)
(_STATE / "prefect").mkdir(parents=True, exist_ok=True)
(_STATE / "mlflow").mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402
import yaml  # noqa: E402

from stfn.config import MovingDigitsParams  # noqa: E402
from stfn.data.contract import write_dataset  # noqa: E402
from stfn.data.moving_digits import make_moving_digits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=3)


# `make test`'s two workers (pytest-xdist, a file at a time) end together when the longest files go
# first (longest-processing-time-first); xdist's default order, most tests first, left the slowest
# one-test files (servers, deploy, the killed run) to the end, one worker idle for a minute. Ordered by
# their measured seconds (2 workers, a fast day), longest first; a file not listed comes after them.
LONGEST_FIRST = (
    "test_predict.py", "test_deploy.py", "test_serve.py", "test_validation.py", "test_flow.py", "test_faults.py",
    "test_calendar_serving.py",
    "test_servers.py", "test_orphan_run.py", "test_secrets.py", "test_promotion_race.py", "test_encoders_learn.py",
    "test_gate.py", "test_ddp.py", "test_german_pm10.py", "test_irish_wind.py", "test_ui.py", "test_cli.py",
    "test_append_faults.py", "test_tune.py",
)  # fmt: skip
# files whose tests share the session's `team_servers` (tests/integration/conftest.py): one unit of
# work, on one worker, so that one pair of servers starts instead of one per worker
SHARED_SERVERS = ("test_deploy.py", "test_promotion_race.py", "test_monitor_retrain.py", "test_tune_workers.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


@pytest.hookimpl(optionalhook=True)  # a pytest without xdist (benchmarks/gpu_check.sh's GPU machine) has no such hook
def pytest_xdist_make_scheduler(config, log):
    """A file at a time (like --dist loadfile), in the collected order (longest first, above), with
    the SHARED_SERVERS files as one unit. Other --dist modes keep xdist's own scheduler."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "team-servers" if Path(scope).name in SHARED_SERVERS else scope

    config.option.loadscopereorder = False  # xdist would sort the files by their number of tests
    return Scheduling(config, log)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_STATE, ignore_errors=True)


def under_ci() -> bool:
    """CI=true or CI=1 (any case): the environment promises every service the tests need."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def need(missing: str, how_to_fix: str) -> NoReturn:
    """A test cannot run because a service or tool is missing. Under CI that is a failure saying
    what to start or install; elsewhere the test is skipped, saying the same."""
    message = f"{missing}: {how_to_fix}"
    if under_ci():
        pytest.fail(f"{message} (CI is set: the tests that need it fail instead of skipping)", pytrace=False)
    pytest.skip(f"{message} (skipped; with CI=true this fails)")


@pytest.fixture(scope="session", name="need")
def need_fixture():
    """`need(missing, how_to_fix)` for tests and fixtures that depend on a service or tool."""
    return need


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A small moving-digits dataset in the contract (session-wide; copy before corrupting)."""
    folder = tmp_path_factory.mktemp("datasets") / "moving-digits"
    write_dataset(folder, *make_moving_digits(TINY))
    return folder


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    dst = tmp_path / "moving-digits"
    shutil.copytree(tiny_dataset, dst)
    return dst


TINY_OVERRIDES = {
    "prepare.moving_digits.n_train": 160,
    "prepare.moving_digits.n_val": 48,
    "prepare.moving_digits.n_test": 48,
    "train.epochs": 2,
    "train.batch_size": 32,
    "model.dim": 16,
    "model.attention_hidden": 16,
}


@pytest.fixture(scope="session")
def write_tiny_params():
    """Write the repo's params.yaml with a tiny dataset and model to a path, plus extra keys."""

    def write(path: Path, **extra) -> None:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for key, value in {**TINY_OVERRIDES, **extra}.items():
            node = params
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    return write
