"""The model registry: registering versions, applying the promotion rule of `stfn.gate`,
re-evaluating the champion on the current test set, the promotion locks, the champion's alias
history, promote and rollback.

Registered model `stfn-<dataset>`; aliases `challenger` (every new version) and `champion` (the
one that passed the gate, or was promoted by hand); never stages. Every call goes through
`stfn.tracking`'s connection and retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout
from mlflow.exceptions import MlflowException

import mlflow
from stfn import gate
from stfn.errors import TrackingError
from stfn.gate import Decision
from stfn.tracking import client, retrying, scrub_uri, unreachable

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
# the alias history, on the registered model (MLflow keeps none itself): one tag per move, read in one
# call; models whose history was kept the old way (one JSON list in HISTORY_TAG) keep it, read first
MOVE_PREFIX = "stfn.champion.move."
HISTORY_TAG = "champion_history"
MAX_REASON = 2000  # characters of a move's reason kept in its record (a tag holds 5000)
GATE_TAG = "gate_report"  # the gate's checks on the version (compact JSON; the run holds gate/report.json)
MAX_TAG = 4900
PROMOTION_LIMIT = "stfn-promote-{name}"  # the Prefect global concurrency limit of a team's promotions


def model_name(dataset: str) -> str:
    return f"stfn-{dataset}"


def test_set_md5(data_md5: str, test_ids: Sequence[str]) -> str:
    """Identity of the held-out data a test metric was computed on: the data version and the
    test samples' ids (a new data version or another split gives another identity)."""
    return hashlib.md5((data_md5 + "\n" + "\n".join(map(str, test_ids))).encode()).hexdigest()


@retrying("registering the model")
def register(model_uri: str, name: str, run_id: str, tags: dict[str, Any], description: str = "") -> str:
    """Register the run's model as a new version of `name` (once per run: a retry finds the
    version it made before), describe it (`description`: how to install what it runs) and set
    the `challenger` alias on it."""
    c = client()
    try:
        c.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001 - not found
        if unreachable(exc):
            raise
        c.create_registered_model(name, description="STFN models trained by the stfn pipeline")
    existing = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
            version = str(mlflow.register_model(model_uri, name).version)
        log.info("registered %s version %s (from run %s)", name, version, run_id)
    if description:
        c.update_model_version(name, version, description=description)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))
    c.set_registered_model_alias(name, CHALLENGER, version)
    return version


@retrying("reading the champion")
def champion(name: str) -> Any | None:
    """The version behind @champion, None when there is none (never None because the server
    could not be asked: that would let any challenger through the gate)."""
    try:
        return client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if unreachable(exc) or not ("not found" in str(exc) or exc.error_code == "RESOURCE_DOES_NOT_EXIST"):
            raise
        return None


@retrying("tagging the version")
def set_model_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, str(version), k, str(v))


@retrying("reading the version behind an alias")
def version_by_alias(name: str, alias: str) -> Any:
    """The model version behind `name@alias`; TrackingError naming both when there is none."""
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if unreachable(exc):
            raise
        raise TrackingError(f"no model '{name}@{alias}' in the registry (train one: stfn run)") from None


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
    uri = mlflow.get_tracking_uri()
    local = _local_store_folder(uri)
    if local is not None:
        return "file", str(local)
    from prefect.settings import PREFECT_API_URL  # lazy: Prefect's import costs ~1 s, needed in team mode only

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
def _file_lock(path: Path, name: str, timeout: float) -> Iterator[None]:
    """An exclusive lock on `path` (filelock: flock on POSIX), polled until `timeout`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except LockTimeout:
        raise TrackingError(f"could not take the promotion lock of {name} in {timeout:.0f} s") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _prefect_lock(limit: str, timeout: float):
    """One slot of a Prefect global concurrency limit, held while the body runs (its lease is
    renewed meanwhile and expires if this process dies, so a crash cannot wedge promotions).
    Prefect is imported here, lazily: only team mode needs it (~1 s)."""
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
    verdict_for: Callable[[Any], gate.Verdict] | None = None,
) -> Decision:
    """Ask the gate under the promotion lock; move @champion when it says so. The decision, the
    reason and the gate report are tagged on the version; a losing challenger never moves the
    champion alias.
    `verdict_for(current champion version or None)`: the paired gate (`stfn.gate.judge`), run
    under the lock on the champion found there; without it, the scalar rule (`stfn.gate.decide`)
    on `champion_value` (the champion's metric on the current test set when the caller measured
    it) or the champion's recorded one."""
    with promotion_lock(name):
        current = champion(name)
        if champion_value is not None and current is not None and str(current.version) != str(champion_value_for):
            champion_value, basis = None, f"champion changed to v{current.version} meanwhile: its recorded value"
        return _promote_if_better(name, version, metric, value, min_improvement, champion_value, basis, verdict_for)


def _promote_if_better(
    name: str,
    version: str,
    metric: str,
    value: float,
    min_improvement: float,
    champion_value: float | None,
    basis: str,
    verdict_for: Callable[[Any], gate.Verdict] | None = None,
) -> Decision:
    current = champion(name)
    champ_version = None if current is None else str(current.version)
    champ_value = champion_value
    if champ_version == str(version):
        verdict, champ_value = gate.Verdict(True, "already champion"), None
    elif verdict_for is not None:
        verdict = verdict_for(current)
        found = [c.champion for c in verdict.checks[:1] if c.champion is not None]
        champ_value = found[0] if found and current is not None else None
    else:
        if current is not None and champ_value is None:
            champ_value = version_metric(current, metric)
        verdict = gate.decide(metric, value, champ_version, champ_value, min_improvement, basis)
    if verdict.promote and champ_version != str(version):
        set_champion(name, str(version), f"gate: {verdict.reason}")
    decision = "promoted" if verdict.promote else "rejected"
    tags = {"decision": decision, "decision_reason": verdict.reason[:MAX_REASON], "judged_on": f"test_{metric}"}
    if verdict.checks:
        tags[GATE_TAG] = gate_report_tag(verdict.checks)
    if verdict_for is not None and champ_value is not None:  # the champion as scored on the current test rows
        tags[f"champion_v{champ_version}_current_test_{metric}"] = champ_value
    for k, v in tags.items():
        client().set_model_version_tag(name, version, k, v)
    rows = [c.row() for c in verdict.checks]
    return Decision(
        name, str(version), verdict.promote, verdict.reason, metric, value, champ_version, champ_value, rows
    )


def gate_report_tag(checks: list[gate.Check]) -> str:
    """The gate's checks as one version tag (a tag holds 5000 characters: details are shortened
    until it fits; the run's gate/report.json keeps them whole)."""
    rows = [c.row() for c in checks]
    for width in (400, 200, 100, 0):
        text = json.dumps([{**r, "detail": str(r["detail"])[:width]} for r in rows], default=float)
        if len(text) <= MAX_TAG:
            return text
    return json.dumps([{"check": r["check"], "passed": r["passed"]} for r in rows])[:MAX_TAG]


def gate_report(name: str, version: str) -> list[dict[str, Any]]:
    """The gate's checks recorded on a version ([] for one judged before the paired gate)."""
    try:
        tags = client().get_model_version(name, str(version)).tags or {}
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"no version {version} of registered model '{name}' ({exc})") from None
    return json.loads(tags[GATE_TAG]) if tags.get(GATE_TAG) else []


@retrying("reading the champion history")
def champion_history(name: str) -> list[dict[str, Any]]:
    """Every move of @champion, oldest first: {action, version, previous, reason, at}. One call to
    the server, whatever the history's length: the moves are tags of the registered model."""
    try:
        tags = client().get_registered_model(name).tags or {}
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"no registered model '{name}' ({exc})") from None
    return _history(tags)


def _history(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The moves recorded in a registered model's tags: those kept the old way (one JSON list in
    HISTORY_TAG, rewritten at every move) first, then one tag per move, in order."""
    legacy = json.loads(tags[HISTORY_TAG]) if tags.get(HISTORY_TAG) else []
    moves = sorted(k for k in tags if k.startswith(MOVE_PREFIX))
    return legacy + [json.loads(tags[k]) for k in moves]


def set_champion(name: str, version: str, reason: str, action: str = "promote") -> None:
    """Move @champion to `version`, recording the move as a tag of its own on the registered model
    (never a rewrite of one growing value: MLflow's SQL store keeps a tag in VARCHAR(5000)).
    The record is written first, the alias moved last: a retry after a failure in between finds
    its own record (the last one, for this same move) and only moves the alias."""
    c = client()
    model = c.get_registered_model(name)  # its tags (the history) and aliases (the champion): one call
    current = (model.aliases or {}).get(CHAMPION)
    previous = None if current is None else str(current)
    tags = model.tags or {}
    history = _history(tags)
    move = {"action": action, "version": str(version), "previous": previous}
    last = history[-1] if history else None
    if not (last and {k: last.get(k) for k in move} == move and previous != str(version)):
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {**move, "reason": reason[:MAX_REASON], "at": at}
        n = len(history) + 1
        key = MOVE_PREFIX + f"{len(history):09d}"
        if last is not None and key in tags and last.get("previous") == previous != last.get("version"):
            # the last record is a move that never reached the alias (its process died in between, and
            # no retry came): this move takes its place, so the history holds only moves that happened
            record["replaces_unfinished"] = f"{last.get('action')} to v{last.get('version')} at {last.get('at')}"
            n -= 1
        key = MOVE_PREFIX + f"{n:09d}"  # zero-padded: the tags sort in the moves' order
        c.set_registered_model_tag(name, key, json.dumps(record))
    c.set_registered_model_alias(name, CHAMPION, str(version))


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
    c = client()
    try:
        mv = c.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"'{name}' has no version {version}") from None
    current = champion(name)
    if current is not None and str(current.version) == str(mv.version):
        return str(current.version)
    set_champion(name, str(mv.version), reason)
    c.set_model_version_tag(name, str(mv.version), "decision", "promoted")
    c.set_model_version_tag(name, str(mv.version), "decision_reason", reason)
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
    client().set_model_version_tag(name, str(current.version), "rolled_back", f"champion moved back to v{target}")
    return str(current.version), target


def version_metric(mv: Any, metric: str) -> float | None:
    tag = (mv.tags or {}).get(f"test_{metric}")
    if tag is not None:
        return float(tag)
    if mv.run_id:
        return client().get_run(mv.run_id).data.metrics.get(f"test_{metric}")
    return None


@retrying("reading the registered version")
def version_for_flow_run(name: str, flow_run_id: str) -> dict[str, Any]:
    """The version a given Prefect flow run registered (its lineage tag), with its decision."""
    for mv in client().search_model_versions(f"name='{name}'"):
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
    c = client()
    filt = f"name='{name}'" if name else None
    try:
        versions = c.search_model_versions(filt) if filt else c.search_model_versions()
    except Exception as exc:  # noqa: BLE001
        if unreachable(exc):
            raise
        raise TrackingError(f"cannot read the model registry: {exc}") from None
    rows = []
    aliases: dict[str, dict[str, list[str]]] = {}
    for v in versions:
        if v.name not in aliases:
            rm = c.get_registered_model(v.name)
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


def run_metric(mv: Any, key: str) -> float | None:
    """A metric of the run that logged model version `mv` (e.g. its `n_parameters`), None without."""
    try:
        return client().get_run(mv.run_id).data.metrics.get(key) if mv.run_id else None
    except MlflowException:
        return None


def judge(
    name: str,
    version: str,
    metric: str,
    value: float,
    rule: gate.Rule,
    verdict_for: Callable[[Any], gate.Verdict],
) -> Decision:
    """The whole promotion decision for a new version: under the promotion lock, the paired gate
    (`verdict_for`, which scores the champion found there on the same current test rows)."""
    return promote_if_better(name, version, metric, value, rule.min_improvement, verdict_for=verdict_for)
