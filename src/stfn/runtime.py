"""Process-wide settings every entry point applies before importing Prefect or MLflow:
local state inside the project, telemetry off. The user's environment always wins."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from stfn.config import ConfigError, Params, Paths, load_params
from stfn.errors import DataValidationError, TrackingError

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
}


def configure_environment(root: Path) -> None:
    """Set defaults for Prefect/MLflow/DVC state under `<root>/.stfn` (git-ignored)."""
    state = Path(root).resolve() / ".stfn"
    defaults = {
        **TELEMETRY_OFF,
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "stfn",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(state / "inductor"),
        "MPLBACKEND": "Agg",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


class _NoTracebackForUserErrors:
    """A logging filter: Prefect logs a failed task/flow with its traceback; for errors in the
    user's input (bad data, bad parameters) or setting (an unreachable tracking server) the message
    alone says what to fix."""

    def filter(self, record) -> bool:  # noqa: ANN001
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (DataValidationError, ConfigError, TrackingError)):
            record.exc_info, record.exc_text = None, None
            record.msg = str(record.msg).split(":", 1)[0] + f": {type(exc).__name__} (details below)"
            record.args = ()
        return True


HARMLESS = (  # known warnings about things the pipeline does on purpose
    "Add type hints to the `predict` method",  # MLflow: the signature is given explicitly
)


class _DropHarmless:
    def filter(self, record) -> bool:  # noqa: ANN001
        text = record.getMessage()
        return not any(h in text for h in HARMLESS)


def quiet_logs(debug: bool = False) -> None:
    """Keep the terminal readable: no per-request HTTP lines, no known-harmless warnings, no
    tracebacks for bad input unless `debug`."""

    def add_once(name: str, kind: type) -> None:  # a second call adds no second filter
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())

    if not debug:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            add_once(name, _NoTracebackForUserErrors)

    for name in ("httpx", "httpcore", "alembic", "mlflow.store.db.utils", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # stfn.tracking reports retries itself
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not debug:
        for name in ("py.warnings", "mlflow.pyfunc", "mlflow.models.model"):
            add_once(name, _DropHarmless)


def stage_context() -> tuple[Params, Paths]:
    """For `python -m stfn.stages.NAME` (what dvc.yaml runs): the project around the current
    directory with its environment set, log lines on stderr, and params.yaml's parameters."""
    paths = Paths.here()
    configure_environment(paths.root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_logs()
    return load_params(paths.params_file), paths
