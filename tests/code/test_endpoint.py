"""The pieces of `stfn serve` that need no server: the inference log (rows, files, rotation), the
input checks of a served model, the error bodies cleaned of MLflow's input echo and stack trace,
and the limits of the ASGI layer (raw ASGI calls against a stand-in app or MLflow's own scoring
app around a stand-in model: body bytes counted as read, conflicting framing, a linear body read,
concurrent requests, samples a request, the body's read timeout, any X-Request-ID bytes)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from stfn.config import ServeParams, load_params
from stfn.endpoint import REQUEST_HEADER, Endpoint, InferenceLog, Served, Summary, _clean, _request_id, _Scored
from stfn.inference import InputError, Predictor

META = {
    "task": "classification",
    "spec": {
        "series": {"steps": 6, "channels": [{"name": "a"}, {"name": "b"}]},
        "frames": {"count": 2, "channels": 1, "height": 4, "width": 4, "dtype": "uint8", "steps": [2, 5]},
        "target": {"name": "digit", "classes": ["x", "y", "z"]},
    },
}


def inputs(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    series = rng.normal(size=(n, 6, 2)).astype(np.float32)
    frames = rng.integers(0, 256, size=(n, 2, 1, 4, 4), dtype=np.uint8)
    return series, frames


def test_a_summary_is_a_row_per_sample_with_the_input_summary_and_the_prediction():
    p = Predictor(None, META)
    series, frames = inputs()
    series[0, :3, 1] = np.nan  # 3 of 12 readings missing
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], np.float32)
    t = Summary.of(p, series, frames, probs, request_id="r1", model="stfn-x", version=4).table()
    assert list(t["row"]) == [0, 1, 2] and set(t["version"]) == {4} and set(t["request_id"]) == {"r1"}
    assert t["series_missing"].tolist() == pytest.approx([0.25, 0.0, 0.0])
    assert t["series_mean_b"].iloc[0] == pytest.approx(np.nanmean(series[0, :, 1]))
    assert t["frames_mean_0"].tolist() == pytest.approx(frames.mean(axis=(1, 2, 3, 4)).tolist())
    assert t["prediction"].tolist() == [1, 0, 2] and t["predicted_class"].tolist() == ["y", "x", "z"]
    assert t["prob_z"].tolist() == pytest.approx([0.1, 0.25, 0.8])
    assert str(t["time"].dtype) == "datetime64[us, UTC]"


def test_the_log_writes_a_file_per_flush_reads_back_as_one_table_and_deletes_old_files(tmp_path):
    p = Predictor(None, META)
    log = InferenceLog(tmp_path / "log", flush_seconds=3600, keep_days=1)
    assert log.flush() is None and InferenceLog.read(tmp_path / "log").empty  # nothing to write
    series, frames = inputs(2)
    probs = np.full((2, 3), 1 / 3, np.float32)
    log.append(Summary.of(p, series, frames, probs, request_id="a", model="m", version=1))
    first = log.flush()
    log.append(Summary.of(p, series[:1], frames[:1], probs[:1], request_id="b", model="m", version=2))
    second = log.flush()
    assert first != second and first.is_file() and second.is_file()
    table = InferenceLog.read(tmp_path / "log")
    assert table["request_id"].tolist() == ["a", "a", "b"] and table["version"].tolist() == [1, 1, 2]
    old = time.time() - 2 * 86400  # two days old: past keep_days
    os.utime(first, (old, old))
    log.append(Summary.of(p, series, frames, probs, request_id="c", model="m", version=2))
    log.close()  # the last rows are written on close, and the rotation runs
    assert not first.exists() and second.exists()
    assert InferenceLog.read(tmp_path / "log")["request_id"].tolist() == ["b", "c", "c"]
    assert not list((tmp_path / "log").glob(".*"))  # no temp file left behind


def test_the_log_keeps_within_its_size_deleting_the_oldest_files_first(tmp_path):
    p = Predictor(None, META)
    series, frames = inputs(4)
    probs = np.full((4, 3), 1 / 3, np.float32)
    log = InferenceLog(tmp_path / "log", flush_seconds=3600, keep_days=30, max_mb=0.1)
    written = []
    for i in range(40):
        log.append(Summary.of(p, series, frames, probs, request_id=f"r{i:02d}", model="m", version=1))
        written.append(log.flush())
    kept = sorted((tmp_path / "log").glob("*.parquet"))
    total = sum(f.stat().st_size for f in kept)
    assert 10 <= len(kept) < 40 and total <= 0.1 * 2**20  # bounded: the cap bit (files of ~9.5 kB)
    assert kept == written[-len(kept) :]  # the newest files, as many as fit: one more would not
    assert total + kept[0].stat().st_size > 0.1 * 2**20
    tiny = InferenceLog(tmp_path / "tiny", flush_seconds=3600, max_mb=1e-6)  # smaller than one file
    tiny.append(Summary.of(p, series, frames, probs, request_id="x", model="m", version=1))
    assert tiny.flush().exists()  # the newest file always stays


@pytest.mark.parametrize(
    "change, phrase",
    [
        (lambda s, f: {"series": s}, "'frames' is missing: expected (N, 2, 1, 4, 4) uint8"),
        (lambda s, f: {"series": s[:, :5], "frames": f}, "'series' has shape (3, 5, 2): expected (N, 6, 2)"),
        (lambda s, f: {"series": s, "frames": f[:, :1]}, "'frames' has shape (3, 1, 1, 4, 4)"),
        (lambda s, f: {"series": s, "frames": f[:2]}, "'series' has 3 samples and 'frames' 2"),
        (lambda s, f: {"series": s, "frames": f.astype(np.float32) * 2}, "values range 0..498: expected"),
        (lambda s, f: {"series": s, "frames": f - 0.5}, "expected (N, 2, 1, 4, 4) uint8 frames with values 0..255"),
        (lambda s, f: {"series": np.where(s > 1, np.inf, s), "frames": f}, "'series' holds an infinite reading"),
        (lambda s, f: {"series": s.tolist(), "frames": [[["x"]]]}, "'frames' has dtype <U1"),
        (lambda s, f: [s, f], "expected named inputs 'series'"),
    ],
)
def test_the_checks_of_a_served_model_name_the_input_and_what_was_expected(change, phrase):
    series, frames = inputs()
    with pytest.raises(InputError) as err:
        Predictor(None, META).check(change(series, frames))
    assert phrase in str(err.value)


def test_missing_readings_pass_the_checks_and_stay_nan():
    series, frames = inputs()
    series[1, 2, 0] = np.nan
    s, f = Predictor(None, META).check({"series": series.tolist(), "frames": frames})
    assert np.isnan(s[1, 2, 0]) and f.dtype == np.uint8


def test_error_bodies_lose_the_echo_of_the_input_and_the_stack_trace():
    raw = json.dumps(
        {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": "Failed to predict data '{'series': array([[...]])}'. \nError: 'frames' is missing: expected x",
            "stack_trace": "Traceback (most recent call last):\n  ...\nValueError: boom",
        }
    ).encode()
    body = _clean(raw, "JSON with series and frames")
    assert body == {"error_code": "INVALID_PARAMETER_VALUE", "message": "'frames' is missing: expected x"}
    long = _clean(json.dumps({"message": "Invalid input. " + "x" * 5000}).encode(), "the inputs")
    assert len(long["message"]) < 700 and long["message"].endswith("(expected the inputs)")
    assert _clean(b"plain text", "")["message"] == "plain text"


# ------------------------------------------------------------------------- the limits of the ASGI layer

MiB = 2**20


async def echo_app(scope, receive, send) -> None:
    """A stand-in for MLflow's scoring app: reads the body as starlette does, answers with its size
    and the request id the layer set."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = json.dumps({"bytes": size, "request_id": _request_id.get()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": raw})


def endpoint(app=echo_app, **limits) -> Endpoint:
    return Endpoint("stfn-x", follow_seconds=3600, limits=ServeParams(**limits), served=Served("stfn-x", "3", app, "x"))


async def request(ep: Endpoint, headers=(), chunks=(b"",), path="/invocations", stall=False, pause=0.0) -> dict:
    """One request through the ASGI layer. The body arrives as `chunks` (an iterable, `pause`
    seconds apart); `stall`: then nothing more ever comes. What came back, and how many body bytes
    the layer took."""
    it, taken, sent = iter(chunks), [0], []
    nxt = [next(it, None)]

    async def receive():
        if nxt[0] is None:
            await asyncio.Event().wait() if stall else None
            return {"type": "http.disconnect"}
        chunk, nxt[0] = nxt[0], next(it, None)
        if pause:
            await asyncio.sleep(pause)
        taken[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": nxt[0] is not None or stall}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers), "query_string": b""}
    await ep(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "json": json.loads(body), "taken": taken[0]}


def call(ep: Endpoint, *args, **kwargs) -> dict:
    return asyncio.run(asyncio.wait_for(request(ep, *args, **kwargs), 20))  # a missing limit fails, not hangs


def test_conflicting_framing_is_refused_with_400_before_the_body_is_read():
    """A 40 MB body announced as `Content-Length: 1` and `Transfer-Encoding: chunked` (the hole:
    read whole, past the 32 MB limit): refused on the headers, no byte read, the connection closed."""
    framing = [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")]
    r = call(endpoint(), framing, (b"x" * MiB for _ in range(40)))
    assert r["status"] == 400 and "both Content-Length and Transfer-Encoding" in r["json"]["message"]
    assert r["taken"] == 0 and r["headers"][b"connection"] == b"close"


@pytest.mark.parametrize(
    "headers",
    [[(b"transfer-encoding", b"chunked")], [(b"content-length", b"1")], []],
    ids=["chunked", "a lying Content-Length", "no header"],
)
def test_the_body_limit_counts_the_bytes_read_whatever_the_headers_say(headers):
    ep = endpoint(max_request_mb=1)
    r = call(ep, headers, (b"x" * 65536 for _ in range(640)))  # 40 MiB in 64 KiB pieces
    assert r["status"] == 413 and "over the limit of 1 MB" in r["json"]["message"]
    assert r["taken"] <= MiB + 65536  # reading stopped at the limit
    assert r["headers"][b"connection"] == b"close"  # and the rest is not drained
    assert r["json"]["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    exact = call(ep, headers, (b"x" * 65536 for _ in range(16)))  # exactly 1 MiB: taken, whole
    assert exact["status"] == 200 and exact["json"]["bytes"] == MiB
    told = call(ep, [(b"content-length", str(2 * MiB).encode())], [b"x" * 2 * MiB])
    assert told["status"] == 413 and told["taken"] == 0  # an honest length over the limit: refused unread


def test_a_body_without_a_length_is_read_in_linear_time():
    """32 MiB in 4 KiB pieces: with `body += chunk` that is ~128 GiB of copying (4 MiB alone took
    74 ms here, 0.77 s in the colleague's report; 32 MiB ~64 times that); collected and joined once
    it is milliseconds."""
    piece = b"x" * 4096
    t0 = time.perf_counter()
    r = call(endpoint(max_request_mb=64), [(b"transfer-encoding", b"chunked")], (piece for _ in range(8192)))
    elapsed = time.perf_counter() - t0
    assert r["status"] == 200 and r["json"]["bytes"] == 32 * MiB
    assert elapsed < 1.0, f"{elapsed:.2f} s to read 32 MiB in 4 KiB pieces"


def test_requests_beyond_max_concurrent_get_a_503_naming_the_limit_with_retry_after():
    gate, answered = asyncio.Event(), []

    async def slow_app(scope, receive, send):
        await gate.wait()
        await echo_app(scope, receive, send)
        answered.append(scope["path"])
        await asyncio.sleep(0.05)  # as MLflow's middleware unwinds after the answer's last byte

    ep = endpoint(slow_app, max_concurrent=2)

    async def scenario():
        first = [asyncio.create_task(request(ep)) for _ in range(2)]
        while ep.active < 2:
            await asyncio.sleep(0.001)
        over = await asyncio.wait_for(request(ep), 5)
        health = asyncio.create_task(request(ep, path="/ping"))  # not counted: waits on the gate like the two
        await asyncio.sleep(0.01)
        assert not health.done() and ep.active == 2
        gate.set()
        while answered.count("/invocations") < 2:  # both answered, their apps still unwinding
            await asyncio.sleep(0.001)
        # a client's next request in that window (8 clients at max_concurrent 8 got 17 % 503s before)
        now = await asyncio.gather(*[request(ep) for _ in range(2)])
        return over, await asyncio.gather(*first, health), now

    over, answered, now = asyncio.run(scenario())
    assert over["status"] == 503 and over["headers"][b"retry-after"] == b"1"
    assert "2 requests at once: the limit is 2 (serve.max_concurrent)" in over["json"]["message"], over["json"]
    assert over["json"]["error_code"] == "TEMPORARILY_UNAVAILABLE" and over["taken"] == 0
    assert [a["status"] for a in answered] == [200, 200, 200] and [a["status"] for a in now] == [200, 200]
    assert ep.active == 0  # every slot given back


class StandIn:
    """A loaded pyfunc's surface as `_Scored` and MLflow's scoring app use it (no weights)."""

    metadata = SimpleNamespace(get_input_schema=lambda: None)

    def __init__(self):
        self.calls: list[int] = []

    def unwrap_python_model(self):
        return SimpleNamespace(meta=META)

    def predict(self, inputs):
        self.calls.append(len(inputs["series"]))
        return np.full((len(inputs["series"]), 3), 1 / 3, np.float32)


def test_more_samples_than_max_batch_get_a_413_naming_the_limit_and_the_count(monkeypatch):
    """Through MLflow's own scoring app (its JSON parsing, its error answers): the limit is
    checked before the model runs."""
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # init sets it; restored after the test
    model = StandIn()
    app = scoring_server.init(_Scored(model, "stfn-x", "3", None, max_batch=3))
    ep = Endpoint("stfn-x", limits=ServeParams(max_batch=3), served=Served("stfn-x", "3", app, "x"))

    def post(n: int) -> dict:
        series, frames = inputs(n)
        body = json.dumps({"inputs": {"series": series.tolist(), "frames": frames.tolist()}}).encode()
        return call(ep, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], [body])

    ok = post(3)
    assert ok["status"] == 200 and len(ok["json"]["predictions"]) == 3 and model.calls == [3]
    r = post(4)
    assert r["status"] == 413, r
    assert r["json"] == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "4 samples in one request: the limit is 3 a request (serve.max_batch)",
    }
    assert model.calls == [3]  # the model never saw the 4
    assert r["headers"][b"x-stfn-model-version"] == b"3"


@pytest.mark.parametrize("how", ["stalls", "trickles"])
def test_a_body_not_received_within_the_read_timeout_gets_a_408(how):
    """Whether the sender stops or sends a little at a time: the whole body has a deadline."""
    ep = endpoint(read_timeout_seconds=0.3)
    t0 = time.perf_counter()
    if how == "stalls":
        r = call(ep, [(b"content-length", b"1000")], [b"x" * 10], stall=True)
    else:
        r = call(ep, [(b"transfer-encoding", b"chunked")], (b"x" for _ in range(10**6)), pause=0.02)
    elapsed = time.perf_counter() - t0
    assert r["status"] == 408 and "within 0.3 s (serve.read_timeout_seconds)" in r["json"]["message"]
    assert r["headers"][b"connection"] == b"close" and r["json"]["error_code"] == "DEADLINE_EXCEEDED"
    assert elapsed < 3, elapsed


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x80", b"caf\xc3\xa9", b"x" * 500, b"", b"   ", b"a\x00b"],
    ids=["not UTF-8", "UTF-8 not ASCII", "too long", "empty", "blank", "a control byte"],
)
def test_any_x_request_id_bytes_get_an_answer_with_a_fresh_id_never_a_500(raw):
    odd = [(b"user-agent", b"\xff\xfe"), (b"x-anything", b"\xc3\x28")]  # other headers' bytes pass through too
    r = call(endpoint(), [(REQUEST_HEADER.encode(), raw), *odd])
    rid = r["headers"][REQUEST_HEADER.encode()].decode("ascii")
    assert r["status"] == 200 and len(rid) == 32 and int(rid, 16) >= 0  # a new id: uuid4().hex
    assert r["json"]["request_id"] == rid  # the one the inference log gets


def test_a_printable_x_request_id_is_kept():
    r = call(endpoint(), [(REQUEST_HEADER.encode(), b" order-42/a b ")])
    assert r["headers"][REQUEST_HEADER.encode()] == b"order-42/a b" and r["json"]["request_id"] == "order-42/a b"


def test_the_serve_limits_are_validated_and_params_yaml_sets_the_defaults():
    for bad in ({"max_batch": 0}, {"max_concurrent": 0}, {"read_timeout_seconds": 0}, {"max_batch": 1.5}):
        with pytest.raises(ValidationError):
            ServeParams(**bad)
    repo = Path(__file__).resolve().parents[2]
    assert load_params(repo / "params.yaml").serve == ServeParams()  # the file and the class agree
