"""Everything MLflow: the tracking store, runs, params, metrics, artifacts, the model (a pyfunc
taking raw `series` and `frames`), the registry, aliases and the promotion gate.

Tracking URI: `MLFLOW_TRACKING_URI`, default `sqlite:///<project>/mlflow/mlflow.db` with
artifacts in `<project>/mlflow/artifacts`. Registered model `stfn-<dataset>`; aliases
`challenger` (every new version) and `champion` (the one that passed the gate); never stages.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stfn.errors import TrackingError
from stfn.evaluation import HIGHER_IS_BETTER, improvement, is_better

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
PIP_REQUIREMENTS = ["torch", "numpy", "pandas", "einops", "pyyaml", "pydantic", "mlflow"]


def model_name(dataset: str) -> str:
    return f"stfn-{dataset}"


def default_tracking_uri(mlflow_dir: Path) -> str:
    return f"sqlite:///{Path(mlflow_dir).resolve() / 'mlflow.db'}"


def tracking_uri(mlflow_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(mlflow_dir)


def scrub_uri(uri: str) -> str:
    """Hide a password in a URI before it is printed or logged."""
    return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", uri)


# How long the tracking calls keep retrying an unreachable tracking server (params.yaml
# `tracking.retry_seconds`, or STFN_TRACKING_RETRY_SECONDS for the commands that read no params).
_RETRY = {"seconds": float(os.environ.get("STFN_TRACKING_RETRY_SECONDS", "120"))}
_IN_CALL = threading.local()  # only the outermost tracking call retries (no nested back-off)


def set_retry_seconds(seconds: float) -> None:
    _RETRY["seconds"] = float(seconds)


def unreachable(exc: BaseException) -> bool:
    """A fault of the connection to the tracking server (refused, reset, timed out, 502-504),
    as opposed to an answer (not found, bad request), which no retry would change."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    from mlflow.exceptions import MlflowException

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


def retrying(what: str):
    """Retry a tracking call with exponential back-off (0.5 s doubling to 10 s) while the server is
    unreachable, for `tracking.retry_seconds` in all; then fail with one clear TrackingError."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if getattr(_IN_CALL, "active", False):
                return fn(*args, **kwargs)
            import mlflow

            deadline, delay, attempt = time.monotonic() + _RETRY["seconds"], 0.5, 0
            while True:
                _IN_CALL.active = True
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    attempt += 1
                    left = deadline - time.monotonic()
                    uri = scrub_uri(mlflow.get_tracking_uri())
                    first = _fault(exc)
                    if left <= 0:
                        raise TrackingError(
                            f"the MLflow tracking server {uri} stayed unreachable while {what} "
                            f"({attempt} attempts over {_RETRY['seconds']:.0f} s, tracking.retry_seconds): {first}. "
                            "The pipeline stopped here; what it recorded before is kept. Run it again when "
                            "the server is back (training resumes from its checkpoint)"
                        ) from None
                    log.warning(
                        "MLflow tracking server %s unreachable while %s (attempt %d): retrying in %.1f s",
                        uri,
                        what,
                        attempt,
                        min(delay, left),
                    )
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 10.0)
                finally:
                    _IN_CALL.active = False

        return call

    return wrap


def configure(mlflow_dir: Path, retry_seconds: float | None = None) -> str:
    """Point MLflow at the project's store (the environment wins); return the URI in use."""
    import mlflow

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


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


@retrying("reading the experiment")
def experiment_id(name: str, mlflow_dir: Path) -> str:
    """The experiment `name`, created on first use with artifacts under `mlflow/artifacts`
    when the store is local (a tracking server decides for itself)."""
    client = _client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(mlflow_dir).startswith("sqlite:"):
        location = (Path(mlflow_dir).resolve() / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


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
    client = _client()
    run = client.create_run(experiment_id(experiment, mlflow_dir), run_name=run_name, tags=tags)
    return run.info.run_id


@retrying("ending the run")
def end_run(run_id: str, status: str = "FINISHED") -> None:
    _client().set_terminated(run_id, status=status)


@retrying("logging parameters")
def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = flatten(params)
    _client().log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])


@retrying("logging metrics")
def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time as _t

    from mlflow.entities import Metric

    now = int(_t.time() * 1000)
    rows = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and np.isfinite(v)]
    if rows:
        _client().log_batch(run_id, metrics=rows)


@retrying("setting tags")
def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


@retrying("logging the dataset")
def log_dataset(run_id: str, name: str, folder: Path, digest: str, samples: Any, context: str = "training") -> None:
    """Link the run to its dataset (`mlflow.log_input`): name, digest (the data md5), source
    folder, and the samples table's schema and profile."""
    import warnings

    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    # schema hints about integer columns and local sources: not actionable here (the schema is
    # inferred when the entity is made, so that is inside too)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = from_pandas(samples, source=str(folder), targets="label", name=name, digest=digest[:36])
        entity = ds._to_mlflow_entity()
    tag = InputTag(key="mlflow.data.context", value=context)
    _client().log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[tag])])


@retrying("uploading an artifact")
def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    _client().log_artifact(run_id, str(path), artifact_path)


# ---------------------------------------------------------------------------------------------
# The model: a pyfunc that takes the raw inputs of the dataset contract
# ---------------------------------------------------------------------------------------------


@retrying("logging the model")
def log_model(run_id: str, checkpoint: Path, features_meta: dict[str, Any], example: dict[str, np.ndarray]) -> str:
    """Log the model (pyfunc, signature for both inputs, an input example, explicit pip
    requirements) into the run; return its model URI."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    import mlflow

    spec = features_meta["spec"]
    t, c = spec["series"]["steps"], len(spec["series"]["channels"])
    fr = spec["frames"]
    n_out = len(spec["target"].get("classes") or []) if features_meta["task"] == "classification" else 0
    inputs = Schema(
        [
            TensorSpec(np.dtype("float32"), (-1, t, c), "series"),
            TensorSpec(np.dtype(fr["dtype"]), (-1, fr["count"], fr["channels"], fr["height"], fr["width"]), "frames"),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, n_out) if n_out else (-1,))])
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "features.json"
        meta_path.write_text(json.dumps(features_meta))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving.py")),  # models-from-code: no pickle
                artifacts={"checkpoint": str(checkpoint), "features": str(meta_path)},
                signature=ModelSignature(inputs=inputs, outputs=outputs),
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
            )
    return info.model_uri


# ---------------------------------------------------------------------------------------------
# Registry: versions, aliases, the promotion gate
# ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    name: str
    version: str
    promoted: bool
    reason: str
    metric: str
    value: float
    champion_version: str | None = None
    champion_value: float | None = None


@retrying("registering the model")
def register(model_uri: str, name: str, run_id: str, tags: dict[str, Any]) -> str:
    """Register the run's model as a new version of `name` (once per run: a retry finds the
    version it made before) and set the `challenger` alias on it."""
    import mlflow

    client = _client()
    try:
        client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001 - not found
        if unreachable(exc):
            raise
        client.create_registered_model(name, description="STFN models trained by the stfn pipeline")
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
            version = str(mlflow.register_model(model_uri, name).version)
        log.info("registered %s version %s (from run %s)", name, version, run_id)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


@retrying("reading the champion")
def champion(name: str) -> Any | None:
    """The version behind @champion, None when there is none (never None because the server
    could not be asked: that would let any challenger through the gate)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if unreachable(exc) or not ("not found" in str(exc) or exc.error_code == "RESOURCE_DOES_NOT_EXIST"):
            raise
        return None


@retrying("tagging the version")
def set_model_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, str(v))


PROMOTION_LIMIT = "stfn-promote-{name}"  # the Prefect global concurrency limit of a team's promotions


@contextmanager
def promotion_lock(name: str, timeout: float = 300.0):
    """Serialise promotions of one registered model across processes and hosts, so that the
    champion is re-read and compared inside the lock (never on stale information).

    - Local store (SQLite): an exclusive `flock` on `<store folder>/.locks/<name>.lock`.
    - Tracking server with a Prefect server (`PREFECT_API_URL`, team mode): the Prefect global
      concurrency limit `stfn-promote-<name>` with one slot, created on first use.
    - Tracking server without a Prefect API: refused unless STFN_UNLOCKED_PROMOTION=1 (a racing
      pipeline could otherwise promote on stale information)."""
    kind, where = lock_kind()
    if kind == "file":
        with _file_lock(Path(where) / ".locks" / f"{name}.lock", name, timeout):
            yield
    elif kind == "prefect":
        with _prefect_lock(PROMOTION_LIMIT.format(name=name), timeout):
            yield
    else:
        log.warning("promotion of %s is not serialised (STFN_UNLOCKED_PROMOTION=1)", name)
        yield


def lock_kind() -> tuple[str, str]:
    """How promotions will be serialised with the current settings: ("file", store folder),
    ("prefect", API URL) or ("unlocked", reason); raises TrackingError when none is safe. The
    pipeline asks before training, so a run cannot fail at the gate after hours of work."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    local = _local_store_folder(uri)
    if local is not None:
        return "file", str(local)
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return "prefect", str(PREFECT_API_URL.value())
    if os.environ.get("STFN_UNLOCKED_PROMOTION") == "1":
        return "unlocked", "STFN_UNLOCKED_PROMOTION=1"
    raise TrackingError(
        f"cannot promote models safely: the tracking store {scrub_uri(uri)} is a server and no Prefect API "
        "is configured to hold the promotion lock. Set PREFECT_API_URL to the team's Prefect server "
        "(or STFN_UNLOCKED_PROMOTION=1 when no other pipeline can promote at the same time)"
    )


def _local_store_folder(uri: str) -> Path | None:
    """The folder of a tracking store on this host's disk (SQLite file or file store), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    if "://" not in uri:
        return Path(uri)
    return None


@contextmanager
def _file_lock(path: Path, name: str, timeout: float):
    import fcntl
    import time as _time

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        deadline = _time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if _time.monotonic() > deadline:
                    raise TrackingError(f"could not take the promotion lock of {name} in {timeout:.0f} s") from None
                _time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _prefect_lock(limit: str, timeout: float):
    """One slot of a Prefect global concurrency limit, held while the body runs (its lease is
    renewed meanwhile and expires if this process dies, so a crash cannot wedge promotions)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            gcl = client.read_global_concurrency_limit_by_name(limit)
            if gcl.limit != 1 or not gcl.active:
                raise TrackingError(
                    f"the Prefect concurrency limit '{limit}' must be active with limit 1 to serialise "
                    f"promotions (it has limit {gcl.limit}, active={gcl.active})"
                )
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
            except ObjectAlreadyExists:
                pass  # another pipeline created it first
    from contextlib import ExitStack

    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError

    with ExitStack() as held:  # leaving it releases the slot, whatever the body raised
        try:
            held.enter_context(concurrency(limit, occupy=1, timeout_seconds=timeout, strict=True))
        except AcquireConcurrencySlotTimeoutError as exc:
            raise TrackingError(f"could not take the promotion lock '{limit}' in {timeout:.0f} s") from exc
        yield


@retrying("judging the challenger")
def promote_if_better(
    name: str,
    version: str,
    metric: str,
    value: float,
    min_improvement: float,
    champion_value: float | None = None,
    basis: str = "",
    champion_value_for: str | None = None,
) -> Decision:
    """The gate: `version` becomes champion when there is none, or when it beats the champion's
    test `metric` by `min_improvement` (direction from `HIGHER_IS_BETTER`). The decision and the
    reason are tagged on the version; a losing challenger never moves the champion alias.
    `champion_value`: the champion's metric on the current test set when the caller measured it."""
    with promotion_lock(name):
        current = champion(name)
        if champion_value is not None and current is not None and str(current.version) != str(champion_value_for):
            champion_value, basis = None, f"champion changed to v{current.version} meanwhile: its recorded value"
        return _promote_if_better(name, version, metric, value, min_improvement, champion_value, basis)


def _promote_if_better(
    name: str,
    version: str,
    metric: str,
    value: float,
    min_improvement: float,
    champion_value: float | None,
    basis: str,
) -> Decision:
    client = _client()
    current = champion(name)
    champ_value = None
    if current is None:
        promoted, reason = True, "no champion yet"
    elif str(current.version) == str(version):
        promoted, reason = True, "already champion"
    else:
        champ_value = champion_value if champion_value is not None else _version_metric(current, metric)
        if champ_value is None:
            promoted, reason = True, f"champion v{current.version} has no recorded test {metric}"
        else:
            gain = improvement(metric, value, champ_value)
            direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
            promoted = is_better(metric, value, champ_value, min_improvement)
            verb = "beats" if promoted else "does not beat"
            reason = (
                f"test {metric} {value:.4f} {verb} champion v{current.version}'s {champ_value:.4f} "
                f"by the required {min_improvement:g} ({direction} is better; change {gain:+.4f})"
                + (f"; {basis}" if basis else "")
            )
    if promoted and (current is None or str(current.version) != str(version)):
        set_champion(name, str(version), f"gate: {reason}")
    decision = "promoted" if promoted else "rejected"
    for k, v in {"decision": decision, "decision_reason": reason, "judged_on": f"test_{metric}"}.items():
        client.set_model_version_tag(name, version, k, v)
    return Decision(
        name,
        str(version),
        promoted,
        reason,
        metric,
        value,
        None if current is None else str(current.version),
        champ_value,
    )


HISTORY_TAG = "champion_history"  # on the registered model; MLflow keeps no alias history itself


@retrying("reading the champion history")
def champion_history(name: str) -> list[dict[str, Any]]:
    """Every move of @champion, oldest first: {action, version, previous, reason, at}."""
    try:
        raw = (_client().get_registered_model(name).tags or {}).get(HISTORY_TAG)
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"no registered model '{name}' ({exc})") from None
    return json.loads(raw) if raw else []


def set_champion(name: str, version: str, reason: str, action: str = "promote") -> None:
    """Move @champion to `version` and append the move to the model's alias history."""
    import time

    client = _client()
    current = champion(name)
    history = champion_history(name)
    history.append(
        {
            "action": action,
            "version": str(version),
            "previous": None if current is None else str(current.version),
            "reason": reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-100:]))


def champion_stack(history: list[dict[str, Any]]) -> list[str]:
    """Replay the history: a promotion pushes its version, a rollback pops the current one."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback":
            if stack:
                stack.pop()
        elif not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
    return stack


@retrying("promoting")
def promote(name: str, version: str, reason: str = "manual promotion") -> str | None:
    """Make `version` the champion by hand (no gate); returns the previous champion."""
    with promotion_lock(name):
        return _promote(name, version, reason)


def _promote(name: str, version: str, reason: str) -> str | None:
    client = _client()
    try:
        mv = client.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"'{name}' has no version {version}") from None
    current = champion(name)
    if current is not None and str(current.version) == str(mv.version):
        return str(current.version)
    set_champion(name, str(mv.version), reason)
    client.set_model_version_tag(name, str(mv.version), "decision", "promoted")
    client.set_model_version_tag(name, str(mv.version), "decision_reason", reason)
    return None if current is None else str(current.version)


@retrying("rolling back")
def rollback(name: str) -> tuple[str, str]:
    """Put the previous champion back (from the recorded alias history); returns (from, to)."""
    with promotion_lock(name):
        return _rollback(name)


def _rollback(name: str) -> tuple[str, str]:
    current = champion(name)
    if current is None:
        raise TrackingError(f"'{name}' has no champion to roll back")
    stack = champion_stack(champion_history(name))
    if len(stack) < 2 or stack[-1] != str(current.version):
        raise TrackingError(
            f"'{name}': no earlier champion recorded before v{current.version} (history: {stack or 'empty'})"
        )
    target = stack[-2]
    set_champion(name, target, f"rollback from v{current.version}", action="rollback")
    client = _client()
    client.set_model_version_tag(name, str(current.version), "rolled_back", f"champion moved back to v{target}")
    return str(current.version), target


def _version_metric(mv: Any, metric: str) -> float | None:
    tag = (mv.tags or {}).get(f"test_{metric}")
    if tag is not None:
        return float(tag)
    if mv.run_id:
        return _client().get_run(mv.run_id).data.metrics.get(f"test_{metric}")
    return None


@retrying("reading the registered version")
def version_for_flow_run(name: str, flow_run_id: str) -> dict[str, Any]:
    """The version a given Prefect flow run registered (its lineage tag), with its decision."""
    client = _client()
    for mv in client.search_model_versions(f"name='{name}'"):
        if (mv.tags or {}).get("prefect_flow_run_id") == flow_run_id:
            tags = mv.tags or {}
            return {
                "registered_model": name,
                "version": str(mv.version),
                "mlflow_run_id": mv.run_id,
                "promoted": tags.get("decision") == "promoted",
                "reason": tags.get("decision_reason", ""),
            }
    raise TrackingError(f"flow run {flow_run_id} registered no version of '{name}'")


@retrying("listing versions")
def list_versions(name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their aliases, metrics and decision (newest first)."""
    client = _client()
    filt = f"name='{name}'" if name else None
    try:
        versions = client.search_model_versions(filt) if filt else client.search_model_versions()
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"cannot read the model registry: {exc}") from None
    rows = []
    aliases: dict[str, dict[str, list[str]]] = {}
    for v in versions:
        if v.name not in aliases:
            rm = client.get_registered_model(v.name)
            amap: dict[str, list[str]] = {}
            for alias, ver in (rm.aliases or {}).items():
                amap.setdefault(str(ver), []).append(alias)
            aliases[v.name] = amap
        tags = v.tags or {}
        rows.append(
            {
                "name": v.name,
                "version": str(v.version),
                "aliases": sorted(aliases[v.name].get(str(v.version), [])),
                "run_id": v.run_id,
                "created": v.creation_timestamp,
                "metric": tags.get("judged_on"),
                "value": tags.get(tags.get("judged_on", ""), None),
                "decision": tags.get("decision"),
                "reason": tags.get("decision_reason"),
            }
        )
    rows.sort(key=lambda r: (r["name"], -int(r["version"])))
    return rows
