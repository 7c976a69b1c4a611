"""`stfn serve`: the champion of a dataset over HTTP, following its alias.

Each loaded version is served by MLflow's own scoring server app (`mlflow.pyfunc.scoring_server.init`:
`/ping`, `/health`, `/version`, `/invocations`, its JSON parsing and schema enforcement). What we
add is a thin ASGI layer in front of it, hand-written because no library swaps the model under a
running MLflow app:

- it follows `models:/<name>@<alias>`: a thread re-reads the alias every `follow_seconds`, loads a
  new version completely (and predicts once) before switching; a request holds the app it started
  with, so none fails during the switch
- every answer names the version that produced it (`X-STFN-Model`, `X-STFN-Model-Version`)
- limits (params.yaml `serve`): body bytes as read, framing, read timeout, requests at once, samples
- error answers keep MLflow's JSON (`error_code`, `message`) without MLflow's echo of the whole
  input and without a stack trace (that goes to the server's log)
- every prediction is logged, a row per sample (when, request, version, input summary, the
  prediction), to parquet files under `.stfn/inference/<dataset>/` (`InferenceLog`)
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, REQUEST_LIMIT_EXCEEDED
from mlflow.pyfunc import scoring_server

from stfn import registry
from stfn.config import ServeParams
from stfn.inference import InputError, Predictor
from stfn.inference_log import InferenceLog, Summary

log = logging.getLogger(__name__)

MODEL_HEADER = "x-stfn-model"
VERSION_HEADER = "x-stfn-model-version"
REQUEST_HEADER = "x-request-id"
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
MB = 1024 * 1024
_VALID_ID = re.compile(rb"[\x20-\x7e]{1,128}")  # printable ASCII: safe in a header, a log and a parquet string
_ERROR_CODES = {408: "DEADLINE_EXCEEDED", 413: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}  # MLflow's


# ---------------------------------------------------------------------------------------------
# One served version
# ---------------------------------------------------------------------------------------------


class _Scored:
    """What MLflow's scoring app calls: the loaded pyfunc, our input checks first (their messages
    name the input and what was expected), then a row per sample into the inference log."""

    def __init__(self, pyfunc: Any, name: str, version: str, inference_log: InferenceLog | None, max_batch: int = 0):
        self.pyfunc, self.name, self.version, self.log, self.max_batch = pyfunc, name, version, inference_log, max_batch
        self.metadata = pyfunc.metadata
        # the contract of the version, from its own logged metadata (models that carry no code of
        # their own have no Predictor: a checker without weights does the same checks)
        self.checker = Predictor(None, pyfunc.unwrap_python_model().meta)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        try:
            series, frames = self.checker.check(data)
            inputs = {"series": series, "frames": frames}
            if self.checker.time(data, len(series)) is not None:
                inputs["timestamp"] = np.asarray(data["timestamp"]).astype(str)
        except InputError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        if self.max_batch and len(series) > (m := self.max_batch):
            msg = f"{len(series)} samples in one request: the limit is {m} a request (serve.max_batch)"
            raise BatchTooLarge(msg, error_code=REQUEST_LIMIT_EXCEEDED)
        out = self.pyfunc.predict(inputs)
        if self.log is not None:
            who = {"request_id": _request_id.get(), "model": self.name, "version": int(self.version)}
            self.log.append(Summary.of(self.checker, series, frames, out, **who))
        return out


class BatchTooLarge(MlflowException):
    """Over `max_batch`: MLflow's app answers with `get_http_status_code()`, 413 for none of its codes."""

    def get_http_status_code(self) -> int:
        return 413


@dataclass
class Served:
    name: str
    version: str
    app: Any  # MLflow's scoring app for this version
    expected: str = ""  # what /invocations takes, in words

    @classmethod
    def load(cls, name: str, version: str, inference_log: InferenceLog | None, max_batch: int = 0) -> Served:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        scored = _Scored(pyfunc, name, version, inference_log, max_batch)
        c = scored.checker
        # one prediction before taking traffic: a version that cannot predict is never switched to
        warm = {
            "series": np.zeros((1, *c.series_shape), np.float32),
            "frames": np.zeros((1, *c.frames_shape), c.frames_dtype),
        }
        if c.takes_time:
            warm["timestamp"] = np.asarray(["2000-01-01T00:00:00"])
        pyfunc.predict(warm)
        names = ("series", "frames", "timestamp") if c.takes_time else ("series", "frames")
        inputs = 'JSON {"inputs": {' + ", ".join(f'"{k}": {c.expected(k)}' for k in names) + "}}"
        return cls(name, version, scoring_server.init(scored), inputs)


# ---------------------------------------------------------------------------------------------
# The endpoint: follows the alias, fronts MLflow's app
# ---------------------------------------------------------------------------------------------


class Endpoint:
    """An ASGI app serving `models:/<name>@<alias>` through MLflow's scoring app."""

    def __init__(
        self,
        name: str,
        alias: str = "champion",
        follow_seconds: float = 5.0,
        limits: ServeParams | None = None,
        inference_log: InferenceLog | None = None,
        served: Served | None = None,  # instead of the registry's version (a test's app)
    ):
        self.name, self.alias, self.follow_seconds = name, alias, follow_seconds
        self.limits = limits or ServeParams()  # the rest of `serve` is the command's
        self.log = inference_log
        self.active = 0  # /invocations requests arrived and not yet answered (the event loop's thread only)
        if served is None:
            mv = registry.version_by_alias(name, alias)  # TrackingError saying how to get one when none
            # loaded in a thread of its own, as later versions are (by the follow thread): with the first
            # load and its warm-up prediction on the main thread, every request then took ~3.5 ms more
            # (torch's thread pool bound to the main thread), for the first ~1,500 requests (measured)
            with ThreadPoolExecutor(max_workers=1) as pool:
                served = pool.submit(Served.load, name, str(mv.version), inference_log, self.limits.max_batch).result()
        self.current = served
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        log.info("serving %s@%s: version %s", name, alias, self.current.version)

    # -- following the alias -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="follow-alias", daemon=True)
        self._thread.start()
        if self.log is not None:
            self.log.start()

    def stop(self) -> None:
        self._stop.set()
        if self.log is not None:
            self.log.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.follow_seconds):
            self.refresh()

    def refresh(self) -> bool:
        """Switch to the version now behind the alias, if it changed (True when switched)."""
        try:
            version = str(registry.version_by_alias(self.name, self.alias).version)
            if version == self.current.version:
                return False
            served = Served.load(self.name, version, self.log, self.limits.max_batch)
        except Exception as exc:  # noqa: BLE001 - keep serving what works; say why
            log.warning("still serving %s v%s: could not switch (%s)", self.name, self.current.version, exc)
            return False
        before, self.current = self.current.version, served  # one reference swap: atomic
        log.info("%s@%s moved: now serving version %s (was %s)", self.name, self.alias, version, before)
        return True

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.current.app(scope, receive, send)
        served = self.current  # this request's version, whatever happens to the alias meanwhile
        headers = dict(scope["headers"])
        given = headers.get(REQUEST_HEADER.encode(), b"").strip()  # bytes, not necessarily text: kept if printable
        rid = given.decode("ascii") if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        _request_id.set(rid)
        extra = [
            (MODEL_HEADER.encode(), served.name.encode()),
            (VERSION_HEADER.encode(), served.version.encode()),
            (REQUEST_HEADER.encode(), rid.encode()),
        ]
        length, lim, refused = headers.get(b"content-length"), self.limits, None
        if length is not None and b"transfer-encoding" in headers:  # smuggling, or a broken client
            refused = 400, "conflicting framing: both Content-Length and Transfer-Encoding"
        elif length is not None and length.isdigit() and int(length) > lim.max_request_mb * MB:
            refused = 413, f"request body of {int(length)} bytes: the limit is {lim.max_request_mb:g} MB"
        elif scope["path"] == "/invocations" and self.active >= lim.max_concurrent:
            refused = 503, f"{self.active} requests at once: the limit is {lim.max_concurrent} (serve.max_concurrent)"
            extra.append((b"retry-after", b"1"))  # most answers take well under a second
        if refused is not None:  # RFC 9112 6.1: close after a 400 for framing; a chunked body is not drained either
            return await self._error(send, *refused, extra, close=refused[0] == 400 or b"transfer-encoding" in headers)
        if scope["path"] != "/invocations":
            return await self._answer(served, scope, receive, send, extra)
        self.active += 1
        slot = [True]  # freed at the answer's last byte, not once MLflow's middleware has unwound

        async def send_counted(message):
            await send(message)
            if slot[0] and message["type"] == "http.response.body" and not message.get("more_body"):
                slot[0], self.active = False, self.active - 1

        try:
            await self._answer(served, scope, receive, send_counted, extra)
        finally:
            self.active -= slot[0]  # not yet freed: no answer was sent

    async def _answer(self, served: Served, scope, receive, send, extra) -> None:
        """The body read whole (counted, within the read timeout), then MLflow's app on it."""
        body = await self._read_body(receive)
        if isinstance(body, tuple):  # refused while reading (or the client left): the rest is not drained
            return await self._error(send, *body, extra, close=True)
        receive = _replay(body, receive)
        held: dict[str, Any] = {}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                if message["status"] >= 400:  # rewrite the error body once it is complete
                    held["start"], held["body"] = message, []
                    return
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                status = held["start"]["status"]
                hint = served.expected if scope["path"] == "/invocations" and status != 413 else ""  # not the batch
                return await self._error(send, status, _clean(b"".join(held["body"]), hint), extra)
            await send(message)

        await served.app(scope, receive, send_wrapped)

    async def _read_body(self, receive) -> bytes | tuple[int, str]:
        """The body (bytes counted as read whatever the headers said, chunks joined once) or (status,
        why). Hand-written: uvicorn times out idle connections, not a slow body."""
        chunks, size, lim = [], 0, self.limits
        try:
            async with asyncio.timeout(lim.read_timeout_seconds):
                while (message := await receive())["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > lim.max_request_mb * MB:
                        return 413, f"request body over the limit of {lim.max_request_mb:g} MB"
                    if not message.get("more_body"):
                        return b"".join(chunks)
                return 400, "request body cut short: the client went away"  # uvicorn drops the answer
        except TimeoutError:
            return 408, f"request body not received within {lim.read_timeout_seconds:g} s (serve.read_timeout_seconds)"

    async def _error(self, send, status: int, message: Any, extra, close: bool = False) -> None:
        code = _ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        body = {"error_code": code, "message": message} if isinstance(message, str) else message
        raw = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *extra]
        headers += [(b"connection", b"close")] * close  # uvicorn closes instead of reading the rest of the body
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


def _replay(body: bytes, receive):
    """A `receive` that gives `body` first, then what the connection says (a disconnect)."""
    sent = False

    async def wrapped():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return wrapped


MAX_MESSAGE = 600  # MLflow echoes the input in some messages: a huge body must not come back


def _clean(raw: bytes, hint: str = "") -> Any:
    """MLflow's error JSON without its stack trace and without its echo of the input
    ("Failed to predict data '<the whole input>'. Error: ..."), cut to MAX_MESSAGE characters;
    when the message names no input (MLflow's parse errors: "cannot convert float NaN to
    integer"), `hint` says what the inputs should be. Plain text becomes a message."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"error_code": "BAD_REQUEST", "message": raw.decode("utf-8", "replace").strip() or "request refused"}
    if not isinstance(body, dict):
        body = {"error_code": "BAD_REQUEST", "message": str(body)}
    trace = body.pop("stack_trace", None)
    if trace:
        log.warning("refused request: %s", trace.strip().splitlines()[-1])
    message = str(body.get("message", ""))
    if message.startswith("Failed to predict data") and "Error: " in message:
        message = message.split("Error: ", 1)[1].strip()
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + " [...]"
    if hint and "expected" not in message:
        message += f" (expected {hint})"
    body["message"] = message
    return body


def serve(
    name: str,
    log_folder: Path,
    host: str,
    port: int,
    alias: str = "champion",
    params: ServeParams | None = None,
    ready: Any = None,
) -> None:
    """Serve `models:/<name>@<alias>` on host:port until interrupted (one uvicorn worker) with params.yaml's
    `serve` settings; `ready(endpoint)` is called once the first version is loaded."""
    import uvicorn  # MLflow's scoring server runs on it; only this command needs it

    sp = params or ServeParams()
    inference_log = InferenceLog(log_folder, sp.log_flush_seconds, sp.log_keep_days, sp.log_max_mb)
    endpoint = Endpoint(name, alias, sp.follow_seconds, sp, inference_log)
    endpoint.start()
    if ready is not None:
        ready(endpoint)
    try:
        # uvicorn's limits kept (5 s keep-alive, 16 KiB head); its limit_concurrency counts idle connections too
        uvicorn.run(endpoint, host=host, port=port, workers=1, lifespan="off", log_level="warning")
    finally:
        endpoint.stop()
