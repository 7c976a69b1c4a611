"""MLflow tracking: the connection (URI, retry of an unreachable server), runs, params, metrics,
tags, datasets, artifacts, and logging the model (a pyfunc taking raw `series` and `frames`).
The registry, the gate and the champion live in `stfn.registry`.

Tracking URI: `MLFLOW_TRACKING_URI`, default `sqlite:///<project>/mlflow/mlflow.db` with
artifacts in `<project>/mlflow/artifacts`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import requests
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, stop_before_delay, wait_exponential

import mlflow
from mlflow import MlflowClient
from stfn.errors import TrackingError

log = logging.getLogger(__name__)

# What a logged model needs where it is served, pinned to the versions this environment runs:
# the distributions `stfn.inference` and its closure import, and MLflow (which brings pandas).
MODEL_DISTRIBUTIONS = ("torch", "numpy", "pandas", "einops", "PyYAML", "pydantic", "mlflow")
# the files of ours a served model imports: the import closure of stfn.model_pyfunc (logged apart), copied into
# the model's folder as code/stfn/ (tests/code/test_layout.py derives the closure from the imports and compares)
MODEL_CODE = (
    "__init__.py", "inference.py", "transforms.py", "models.py", "encoders.py", "patches.py", "covariates.py",
    "config.py", "errors.py",
)  # fmt: skip


def default_tracking_uri(mlflow_dir: Path) -> str:
    return f"sqlite:///{Path(mlflow_dir).resolve() / 'mlflow.db'}"


def tracking_uri(mlflow_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(mlflow_dir)


# a URI in free text: a scheme, "://", then up to whitespace or the start of another URI
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:(?![A-Za-z][A-Za-z0-9+.-]*://)\S)+")
# a query or fragment parameter whose value is a secret: password, passwd, pwd, token, secret, api_key, sig...
_SECRET_PARAM = re.compile(r"pass|pwd|token|secret|key|credential|signature|^auth$|^sig$", re.IGNORECASE)
_PARAM = re.compile(r"(?<=[?&;#])([^=&;#]+)=([^&;#]*)")


def scrub_uri(uri: str) -> str:
    """Hide the secrets of every URI in `uri` (a URI, or a text quoting some) before it is printed
    or logged: the password of the user info (`//user:***@`, `//:***@`, a password with `@` in
    it whole) and the value of a query or fragment parameter named like a secret (`?password=***`,
    `pwd`, `token`, `secret`, `api_key`, ...). Everything else is left as written.

    urllib.parse.urlsplit finds the user info (up to the last `@` of the authority); ours are the
    regexes that find URIs in free text and parameters in place, because urlsplit takes one URI
    and urlunsplit/urlencode rewrite what they keep (`sqlite:///x` comes back as `sqlite:/x`), and
    SQLAlchemy's make_url (`render_as_string(hide_password=True)`) cuts a password at its first
    `@` and leaves the query alone."""
    return _URI.sub(lambda m: _scrub_one(m.group()), uri)


def _scrub_one(uri: str) -> str:
    from urllib.parse import unquote_plus, urlsplit

    core = uri.rstrip("'\")]}>,;.")  # the quotes and brackets of the text around it
    if core != uri:
        return _scrub_one(core) + uri[len(core) :]
    start = uri.index("://") + 3
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:  # not parseable (e.g. an unclosed "[" of an IPv6 host): hide all of it
        return uri[:start] + "***"
    end = netloc.rfind("@")  # the user info ends at the authority's last "@" (urllib, httpx, requests)
    if end < 0:
        # SQLAlchemy, which takes the database URLs, reads a password up to the first "@" even
        # through an unescaped "/", "?" or "#" (which end the authority for urllib)
        user, colon, after = netloc.partition(":")
        at = uri.find("@", start)
        if colon and at > 0 and not after.isdigit() and not user.startswith("["):
            end = at - start
    head, rest = uri[:start], uri[start:]
    if end >= 0:
        user, colon, password = rest[:end].partition(":")
        if password:
            head, rest = f"{head}{user}:***", rest[end:]

    def param(m: re.Match) -> str:
        return f"{m.group(1)}=***" if _SECRET_PARAM.search(unquote_plus(m.group(1))) and m.group(2) else m.group()

    return head + _PARAM.sub(param, rest)


# How long the tracking calls keep retrying an unreachable tracking server (params.yaml
# `tracking.retry_seconds`, or STFN_TRACKING_RETRY_SECONDS for the commands that read no params).
_RETRY = {"seconds": float(os.environ.get("STFN_TRACKING_RETRY_SECONDS", "120"))}
_IN_CALL = threading.local()  # only the outermost tracking call retries (no nested back-off)


def set_retry_seconds(seconds: float) -> None:
    _RETRY["seconds"] = float(seconds)


def unreachable(exc: BaseException) -> bool:
    """A fault of the connection to the tracking server (refused, reset, timed out, 502-504),
    as opposed to an answer (not found, bad request), which no retry would change."""
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    if isinstance(exc, MlflowException):
        msg = str(exc)
        faults = (
            "Max retries exceeded",
            "Connection refused",
            "Connection aborted",
            "Read timed out",
            "error code 502",
            "error code 503",
            "error code 504",
            "RemoteDisconnected",
        )
        return any(f in msg for f in faults)
    return False


def _fault(exc: BaseException) -> str:
    """What went wrong with the connection, in a few words (MLflow's message nests urllib3's)."""
    msg = str(exc)
    for needle, short in (
        ("NewConnectionError", "connection refused"),
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("RemoteDisconnected", "connection closed by the server"),
        ("Connection aborted", "connection aborted"),
        ("error code 502", "HTTP 502"),
        ("error code 503", "HTTP 503"),
        ("error code 504", "HTTP 504"),
    ):
        if needle in msg:
            return short
    return msg.splitlines()[0][:200] if msg else type(exc).__name__


def server_failure(exc: BaseException) -> str | None:
    """A failure of the tracking server's database (a refused write, a constraint) as one sentence
    without the SQL statement and parameters MLflow quotes; None for any other error."""
    if not isinstance(exc, MlflowException):
        return None
    msg = getattr(exc, "message", None) or str(exc)
    if not any(mark in msg for mark in ("[SQL:", "psycopg2.", "sqlalchemy.", "sqlite3.")):
        return None  # not the server's database: callers handle it as they did
    msg = re.split(r"\s*\[SQL:|\s*\[parameters:|\s*\(Background on this error", msg)[0]
    msg = re.sub(r"\((?:psycopg2|sqlite3|sqlalchemy|pymysql)[\w.]*\)\s*", "", msg)  # the driver's class names
    return " ".join(msg.split())[:300] or type(exc).__name__


def retrying(what: str):
    """Retry a tracking call with exponential back-off (0.5 s doubling to 10 s, tenacity) while the
    server is unreachable, for `tracking.retry_seconds` in all; then fail with one clear
    TrackingError. Only the outermost tracking call retries (no nested back-off)."""

    def warn(state: RetryCallState) -> None:
        log.warning(
            "MLflow tracking server %s unreachable while %s (attempt %d): retrying in %.1f s",
            scrub_uri(mlflow.get_tracking_uri()),
            what,
            state.attempt_number,
            state.upcoming_sleep,
        )

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if getattr(_IN_CALL, "active", False):
                return fn(*args, **kwargs)
            _IN_CALL.active = True
            try:
                for attempt in Retrying(
                    retry=retry_if_exception(unreachable),
                    wait=wait_exponential(multiplier=0.5, max=10.0),
                    stop=stop_before_delay(_RETRY["seconds"]),
                    before_sleep=warn,
                ):
                    with attempt:
                        return fn(*args, **kwargs)
            except MlflowException as exc:
                refused = server_failure(exc)
                if refused is None:
                    raise
                raise TrackingError(
                    f"the MLflow tracking server {scrub_uri(mlflow.get_tracking_uri())} failed while {what}: {refused}"
                ) from None
            except RetryError as err:
                last = err.last_attempt
                raise TrackingError(
                    f"the MLflow tracking server {scrub_uri(mlflow.get_tracking_uri())} stayed unreachable while "
                    f"{what} ({last.attempt_number} attempts over {_RETRY['seconds']:.0f} s, tracking.retry_seconds): "
                    f"{_fault(last.exception())}. The pipeline stopped here; what it recorded before is kept. Run it "
                    "again when the server is back (training resumes from its checkpoint)"
                ) from None
            finally:
                _IN_CALL.active = False

        return call

    return wrap


def configure(mlflow_dir: Path, retry_seconds: float | None = None) -> str:
    """Point MLflow at the project's store (the environment wins); return the URI in use."""
    uri = tracking_uri(mlflow_dir)
    if retry_seconds is not None:
        set_retry_seconds(retry_seconds)
    if uri.startswith("sqlite:"):
        Path(mlflow_dir).mkdir(parents=True, exist_ok=True)
    else:  # each request fails fast; `retrying` decides how long to keep trying
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    return uri


def client() -> MlflowClient:
    """The MLflow client of the configured store (call `configure` first)."""
    return MlflowClient()


@retrying("reading the experiment")
def experiment_id(name: str, mlflow_dir: Path) -> str:
    """The experiment `name`, created on first use with artifacts under `mlflow/artifacts`
    when the store is local (a tracking server decides for itself)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(mlflow_dir).startswith("sqlite:"):
        location = (Path(mlflow_dir).resolve() / "artifacts" / name).as_uri()
    return c.create_experiment(name, artifact_location=location)


def git_sha(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@retrying("starting the run")
def start_run(experiment: str, mlflow_dir: Path, run_name: str, tags: dict[str, str]) -> str:
    run = client().create_run(experiment_id(experiment, mlflow_dir), run_name=run_name, tags=tags)
    return run.info.run_id


@retrying("searching the running runs")
def running_runs(experiment: str, mlflow_dir: Path) -> list[Any]:
    """The runs of `experiment` whose status is still RUNNING."""
    return client().search_runs([experiment_id(experiment, mlflow_dir)], filter_string="attributes.status = 'RUNNING'")


@retrying("ending the run")
def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


@retrying("logging parameters")
def log_params(run_id: str, params: dict[str, Any]) -> None:
    flat = flatten(params)
    client().log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])


@retrying("logging metrics")
def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    if rows:
        client().log_batch(run_id, metrics=rows)


@retrying("setting tags")
def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


@retrying("reading the run")
def run_status(run_id: str) -> str:
    """RUNNING, FINISHED, FAILED or KILLED."""
    return client().get_run(run_id).info.status


@retrying("logging the dataset")
def log_dataset(run_id: str, name: str, folder: Path, digest: str, samples: Any, context: str = "training") -> None:
    """Link the run to its dataset (`mlflow.log_input`): name, digest (the data md5), source
    folder, and the samples table's schema and profile."""

    # schema hints about integer columns and local sources: not actionable here (the schema is
    # inferred when the entity is made, so that is inside too)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = from_pandas(samples, source=str(folder), targets="label", name=name, digest=digest[:36])
        entity = ds._to_mlflow_entity()
    tag = InputTag(key="mlflow.data.context", value=context)
    client().log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[tag])])


@retrying("uploading an artifact")
def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


# ---------------------------------------------------------------------------------------------
# The model: a pyfunc that takes the raw inputs of the dataset contract
# ---------------------------------------------------------------------------------------------


def model_requirements() -> list[str]:
    """`name==version` of each of MODEL_DISTRIBUTIONS as installed here. torch is pinned without its
    local build tag (`2.13.0+cpu` -> `torch==2.13.0`, which a package index can resolve); which build
    to install is stated by `torch_build()`."""
    return [f"{d}=={importlib.metadata.version(d).split('+')[0]}" for d in MODEL_DISTRIBUTIONS]


def torch_build() -> dict[str, str]:
    """The torch build the model was trained with, and how a server installs the same kind."""
    import torch  # already loaded by every caller that logs a model; not needed to read a run

    version = torch.__version__.split("+")[0]
    cuda = torch.version.cuda
    if cuda:
        tag = "cu" + cuda.replace(".", "")
        kind = f"CUDA {cuda} build"
    else:
        tag, kind = "cpu", "CPU build"
    index = f"https://download.pytorch.org/whl/{tag}"
    return {
        "torch": str(torch.__version__),
        "kind": kind,
        "install": f"pip install torch=={version} --index-url {index}",
    }


def model_description(build: dict[str, str]) -> str:
    return (
        f"Trained with torch {build['torch']} ({build['kind']}). A server installs torch first, "
        f"then the model's requirements.txt: `{build['install']}` "
        "(for a GPU server, the CUDA build of the same version, e.g. --index-url "
        "https://download.pytorch.org/whl/cu128; the weights load on either). The model's code travels in its "
        "folder (code/stfn): no checkout of the project is needed to load it."
    )


def _model_code(dest: Path) -> Path:
    """A `stfn` package folder holding only MODEL_CODE (what the served model imports)."""
    pkg = dest / "stfn"
    pkg.mkdir(parents=True)
    here = Path(__file__).parent
    for name in MODEL_CODE:
        (pkg / name).write_bytes((here / name).read_bytes())
    return pkg


@retrying("logging a report")
def log_dict(run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    """A JSON report into the run's artifacts (e.g. gate/report.json)."""
    client().log_dict(run_id, data, artifact_file)


@retrying("logging the model")
def log_model(
    run_id: str,
    checkpoint: Path,
    features_meta: dict[str, Any],
    example: dict[str, np.ndarray],
    reference: Path | None = None,
) -> str:
    """Log the model into the run and return its URI: a pyfunc (models-from-code), the signature
    of both inputs, an input example, its own code (`code/stfn`, MLflow's code_paths) and the exact
    requirements of this environment, torch's build in the metadata; `reference`, the reference
    statistics `stfn monitor` compares new data with, as the model's artifact `reference`."""

    spec = features_meta["spec"]
    t, c = spec["series"]["steps"], len(spec["series"]["channels"])
    fr = spec["frames"]
    n_out = len(spec["target"].get("classes") or []) if features_meta["task"] == "classification" else 0
    inputs = Schema(
        [
            TensorSpec(np.dtype("float32"), (-1, t, c), "series"),
            TensorSpec(np.dtype(fr["dtype"]), (-1, fr["count"], fr["channels"], fr["height"], fr["width"]), "frames"),
            # ISO 8601 strings: the calendar the model was trained with (features' `timestamp`)
            *([TensorSpec(np.dtype(str), (-1,), "timestamp")] if features_meta.get("timestamp") else []),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, n_out) if n_out else (-1,))])
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "features.json"
        meta_path.write_text(json.dumps(features_meta))
        code = _model_code(Path(tmp) / "code")
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("model_pyfunc.py")),  # models-from-code: no pickle
                artifacts={
                    "checkpoint": str(checkpoint),
                    "features": str(meta_path),
                    **({"reference": str(reference)} if reference is not None else {}),
                },
                signature=ModelSignature(inputs=inputs, outputs=outputs),
                input_example=example,
                pip_requirements=model_requirements(),
                code_paths=[str(code)],
                metadata={"torch_build": torch_build()},
            )
    return info.model_uri
