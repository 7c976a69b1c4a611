"""Serving: `stfn serve` side by side with MLflow's bare scoring server (`mlflow models serve
--env-manager local`, one worker each) on the same registered model: requests per second and
p50 / p99 latency at batch 1 and batch 64, with 1 and 8 concurrent clients, the two servers
measured alternately within each round. Then where the time of one request goes, in-process:
MLflow's JSON parsing, its schema enforcement + the model, our checks and inference-log summary,
and writing the JSON answer."""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import STATE, project, table  # noqa: I001

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], cwd: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # `mlflow models serve` execs uvicorn from PATH
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:3]} exited: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{argv[:3]} did not answer /ping in 180 s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    from stfn.ops.servers import stop_group

    stop_group(proc.pid, 15)


def _load(port: int, body: bytes, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """`clients` threads, each on one keep-alive connection, posting `body` for `seconds`:
    (answers per second over the time until the last answer, latencies in s, errors)."""
    start = time.monotonic()
    stop = start + seconds
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            lat[k].append(time.perf_counter() - t0)
            errors[k] += resp.status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start  # the last request started before `stop` ended after it
    every = [x for part in lat for x in part]
    return len(every) / elapsed, every, sum(errors)


def _bodies(root: Path) -> dict[int, bytes]:
    from stfn.data import contract

    folder = root / "data" / "raw" / "moving-digits"
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    rows = np.arange(64)
    ids = samples["sample_id"].astype(str).iloc[rows]
    series = contract.series_array(contract.read_parquet(folder, contract.SERIES_FILE, spec.name), ids, spec)
    frames = np.asarray(contract.open_frames(folder, spec, len(samples))[rows])
    out = {}
    for n in (1, 64):
        inputs = {"series": series[:n].tolist(), "frames": frames[:n].tolist()}
        out[n] = json.dumps({"inputs": inputs}).encode()
    return out


def _breakdown(name: str, body: bytes, repeats: int = 30) -> dict[str, float]:
    """Median ms per step of one /invocations call, in-process, as MLflow's app runs it."""
    from io import StringIO

    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    from stfn.endpoint import Summary, _Scored

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    scored = _Scored(pyfunc, name, "0", None)
    schema = pyfunc.metadata.get_input_schema()
    steps: dict[str, list[float]] = {"json parse (MLflow)": [], "schema + model (MLflow + ours)": [],
                                     "our checks + log summary": [], "answer to JSON (MLflow)": []}  # fmt: skip
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = scoring_server._parse_json_data(body, pyfunc.metadata, schema).data
        t1 = time.perf_counter()
        out = pyfunc.predict(data)
        t2 = time.perf_counter()
        series, frames = scored.checker.check(data)
        Summary.of(scored.checker, series, frames, out, request_id="", model=name, version=0)
        t3 = time.perf_counter()
        scoring_server.predictions_to_json(out, StringIO())
        t4 = time.perf_counter()
        for key, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[key].append(dt * 1000)
    return {k: statistics.median(v) for k, v in steps.items()}


def run(rounds: int = 3, seconds: float = 4.0) -> tuple[dict, str]:
    from flows.training_pipeline import training_pipeline

    root = project("serve", 320, **{"train.epochs": 1, "serve.log_flush_seconds": 2})
    result = training_pipeline(root=str(root))  # the default model, registered (trained briefly)
    name = result["registered_model"]
    bodies = _bodies(root)
    ours_port, bare_port = _free_port(), _free_port()
    servers = {
        "stfn serve": (
            [str(BIN / "stfn"), "serve", "--port", str(ours_port)],
            ours_port,
        ),
        "mlflow models serve": (
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}@champion",
                "--env-manager",
                "local",
                "--port",
                str(bare_port),
                "--workers",
                "1",
            ],
            bare_port,
        ),  # fmt: skip
    }
    procs = {k: _start(argv, root, port, STATE / f"{k.split()[0]}-serve.log") for k, (argv, port) in servers.items()}
    figures: dict[str, dict] = {}
    try:
        for batch, body in bodies.items():
            for clients in (1, 8):
                key = f"batch{batch}_clients{clients}"
                per = {k: {"rps": [], "lat": [], "errors": 0} for k in servers}
                for r in range(rounds):
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))  # alternate who goes first
                    for k in order:
                        _load(servers[k][1], body, clients, 1.0)  # warm the connection and the caches
                        rps, lat, errors = _load(servers[k][1], body, clients, seconds)
                        per[k]["rps"].append(rps)
                        per[k]["lat"] += lat
                        per[k]["errors"] += errors
                figures[key] = {
                    k: {
                        "rps": statistics.median(v["rps"]),
                        "rps_rounds": v["rps"],
                        "p50_ms": float(np.percentile(v["lat"], 50) * 1000),
                        "p99_ms": float(np.percentile(v["lat"], 99) * 1000),
                        "errors": v["errors"],
                    }
                    for k, v in per.items()
                }
                ours, bare = figures[key]["stfn serve"], figures[key]["mlflow models serve"]
                figures[key]["ratio_rps"] = ours["rps"] / bare["rps"]
    finally:
        for p in procs.values():
            _stop(p)
    breakdown = {n: _breakdown(name, body) for n, body in bodies.items()}
    worst = min(v["ratio_rps"] for v in figures.values())
    out = {"serving": figures, "serving_breakdown_ms": breakdown, "serving_worst_ratio": worst}
    rows = []
    for key, f in figures.items():
        for k in servers:
            ratio = f"{f['ratio_rps']:.3f}x" if k == "stfn serve" else ""
            rows.append((key, k, f"{f[k]['rps']:.1f}", f"{f[k]['p50_ms']:.1f}", f"{f[k]['p99_ms']:.1f}",
                         f[k]["errors"], ratio))  # fmt: skip
    text = table(
        f"5. Serving, one worker each ({rounds} alternated rounds of {seconds:g} s; rps: median of the rounds)",
        rows,
        ("load", "server", "req/s", "p50 ms", "p99 ms", "errors", "ours/bare"),
    )
    text += f"\nworst ratio (target >= 0.90): {worst:.3f}"
    text += "\n" + table(
        "   where one request's time goes, in-process (median ms)",
        [(step, *(f"{breakdown[n][step]:.2f}" for n in bodies)) for step in breakdown[1]],
        ("step", *(f"batch {n}" for n in bodies)),
    )
    return out, text


if __name__ == "__main__":
    print(run()[1])
