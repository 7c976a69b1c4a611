"""The champion leaves the project: a registered model loads from its own folder in a fresh
virtualenv built from its own requirements; `stfn serve` answers like `stfn predict`, refuses bad
requests with a 4xx naming the input (framing tricks and odd header bytes too, sent on a raw
socket), follows @champion across a promotion and a rollback with no failed request, and logs what
it answered."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from teamlib import BIN, free_port, serving, stfn_cmd

import mlflow
from stfn import registry
from stfn.data import contract
from stfn.endpoint import VERSION_HEADER, InferenceLog

NAME = "serve-digits"
MODEL = f"stfn-{NAME}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, write_tiny_params):
    """Two registered versions of stfn-serve-digits: v1 @champion (2 epochs), v2 (1 epoch)."""
    from flows.training_pipeline import training_pipeline
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    root = tmp_path_factory.mktemp("serve")
    write_tiny_params(
        root / "params.yaml",
        **{
            "data.dataset": NAME,
            "serve.follow_seconds": 1,
            "serve.log_flush_seconds": 1,
            "serve.max_request_mb": 4,
            "serve.read_timeout_seconds": 3,
        },
    )
    params = MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=11)
    write_dataset(root / "data" / "raw" / NAME, *make_moving_digits(params, name=NAME))
    first = training_pipeline(root=str(root))
    second = training_pipeline(root=str(root), overrides=["train.epochs=1"])  # other weights, same features
    v1, v2 = str(first["version"]), str(second["version"])
    if champion_version() != v1:  # the gate let v2 through: the tests start from v1 @champion
        registry.promote(MODEL, v1, "test set-up")
    return root, v1, v2


def champion_version() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(MODEL, "champion").version)


def split_inputs(root: Path, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The raw inputs of the test split (as `stfn predict --split test` reads them)."""
    folder = root / "data" / "raw" / NAME
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, NAME)
    rows = np.flatnonzero(samples["split"].astype(str).to_numpy() == "test") if rows is None else rows
    ids = samples["sample_id"].astype(str).iloc[rows]
    series = contract.series_array(contract.read_parquet(folder, contract.SERIES_FILE, NAME), ids, spec)
    frames = np.asarray(contract.open_frames(folder, spec, len(samples))[rows])
    return {"series": series, "frames": frames, "sample_id": ids.to_numpy()}


# ------------------------------------------------------------------------- a portable model


@pytest.mark.slow
def test_the_champion_loads_and_predicts_in_a_fresh_venv_from_its_own_folder(project, tmp_path):
    root, v1, _ = project
    uri = f"models:/{MODEL}@champion"
    model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "copied")))
    # its own code, exact requirements, the Python version, the torch build in the description
    assert sorted(p.name for p in (model_dir / "code" / "stfn").glob("*.py")) == sorted(
        [
            "__init__.py",
            "inference.py",
            "transforms.py",
            "models.py",
            "encoders.py",
            "patches.py",
            "covariates.py",
            "config.py",
            "errors.py",
        ]
    )
    reqs = (model_dir / "requirements.txt").read_text().split()
    assert reqs and all("==" in r for r in reqs), reqs
    assert "torch==2.13.0" in reqs
    assert yaml.safe_load((model_dir / "python_env.yaml").read_text())["python"] == ".".join(
        map(str, sys.version_info[:3])
    )
    mv = mlflow.MlflowClient().get_model_version(MODEL, v1)
    assert "CPU build" in mv.description and "--index-url https://download.pytorch.org/whl/cpu" in mv.description

    # a fresh venv from the model's requirements alone (torch first, as the Makefile installs it)
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # --no-compile: pip's byte-compiling of torch took 11 of its 19 s here (the import compiles what it needs)
    subprocess.run([*pip, "--no-compile", "torch==2.13.0"], check=True, capture_output=True)
    uv = BIN / "uv"
    install = [str(uv), "pip", "install", "--quiet", "--python", str(py)] if uv.exists() else pip
    subprocess.run([*install, "-r", str(model_dir / "requirements.txt")], check=True, capture_output=True)

    inputs = split_inputs(root)
    away = tmp_path / "elsewhere"  # outside the project, a copy of the model folder only
    shutil.copytree(model_dir, away / "model")
    np.savez(away / "inputs.npz", series=inputs["series"], frames=inputs["frames"])
    script = (
        "import numpy as np, mlflow.pyfunc\n"
        "m = mlflow.pyfunc.load_model('model')\n"
        "import stfn  # the package the model brought\n"
        "d = np.load('inputs.npz')\n"
        "np.save('out.npy', m.predict({'series': d['series'], 'frames': d['frames']}))\n"
        "print(stfn.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    proc = subprocess.run([str(py), "-c", script], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("model/code/stfn/__init__.py"), proc.stdout  # not this checkout's
    here = mlflow.pyfunc.load_model(f"models:/{MODEL}/{v1}").predict(
        {"series": inputs["series"], "frames": inputs["frames"]}
    )
    np.testing.assert_allclose(np.load(away / "out.npy"), here, rtol=0, atol=1e-6)

    # MLflow's Dockerfile for it refers to nothing outside the model folder (no Docker daemon here)
    out = tmp_path / "docker"
    proc = subprocess.run(
        [str(BIN / "mlflow"), "models", "generate-dockerfile", "-m", uri, "-d", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dockerfile = (out / "Dockerfile").read_text()
    sources = [line.split()[1] for line in dockerfile.splitlines() if line.split()[:1] in (["COPY"], ["ADD"])]
    assert sources == ["model_dir"], sources
    assert str(root) not in dockerfile and "/work" not in dockerfile and "pip install -e" not in dockerfile
    assert (out / "model_dir" / "code" / "stfn" / "inference.py").is_file()


# ------------------------------------------------------------------------- the endpoint


@pytest.fixture(scope="module")
def server(project):
    """`stfn serve` on a free port in the project (follows the alias every second)."""
    root = project[0]
    with serving(root) as (url, proc):
        yield url, proc, root


def invoke(url: str, series: np.ndarray, frames: np.ndarray) -> requests.Response:
    s = np.where(np.isnan(series), None, series.astype(object)).tolist()  # missing readings travel as null
    body = json.dumps({"inputs": {"series": s, "frames": frames.tolist()}})
    return requests.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60)


@pytest.mark.slow
def test_the_endpoint_answers_like_batch_predict_row_for_row(server):
    url, _, root = server
    assert requests.get(f"{url}/health").status_code == 200
    assert requests.get(f"{url}/version").text == mlflow.__version__
    proc = stfn_cmd(root, {}, "predict", "--dataset", str(root / "data" / "raw" / NAME), "--split", "test")
    assert proc.returncode == 0, proc.stderr
    batch = pd.read_parquet(root / "reports" / "predictions" / f"{NAME}-test.parquet")
    inputs = split_inputs(root)
    assert list(batch["sample_id"]) == list(inputs["sample_id"])
    online = []
    for i in range(0, len(batch), 16):
        r = invoke(url, inputs["series"][i : i + 16], inputs["frames"][i : i + 16])
        assert r.status_code == 200, r.text
        assert r.headers[VERSION_HEADER] == str(batch["model_version"].iloc[0])
        online.append(np.asarray(r.json()["predictions"]))
    online = np.concatenate(online)
    probs = batch[[c for c in batch.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(online, probs, rtol=0, atol=1e-6)
    assert (online.argmax(axis=1) == batch["prediction"].to_numpy()).all()

    # missing readings as JSON null are masked as in training: the answer equals the model's on NaN
    series = inputs["series"][:4].copy()
    series[0, :5, 0] = np.nan
    series[2, :, 1] = np.nan
    r = invoke(url, series, inputs["frames"][:4])
    assert r.status_code == 200, r.text
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{r.headers[VERSION_HEADER]}")
    expected = model.predict({"series": series, "frames": inputs["frames"][:4]})
    np.testing.assert_allclose(np.asarray(r.json()["predictions"]), expected, rtol=0, atol=1e-6)
    assert not np.allclose(expected[0], probs[0], atol=1e-6)  # the gap changed the answer: it was used


def bad_requests(example: dict) -> dict[str, tuple[bytes, dict, int, str]]:
    """Kind -> (body, headers, expected status, a phrase the message must hold)."""
    js = {"Content-Type": "application/json"}

    def with_(change) -> bytes:
        e = json.loads(json.dumps(example))
        change(e["inputs"])
        return json.dumps(e).encode()

    def put(path, value):
        def change(i):
            node = i
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value

        return change

    return {
        "not JSON": (b"{not json", js, 400, "valid JSON"),
        "empty body": (b"", js, 400, "valid JSON"),
        "frames missing": (
            with_(lambda i: i.pop("frames")),
            js,
            400,
            "'frames' is missing: expected (N, 8, 1, 32, 32)",
        ),
        "series missing": (with_(lambda i: i.pop("series")), js, 400, "'series' is missing: expected (N, 32, 4)"),
        "series wrong shape": (
            with_(lambda i: i.update(series=[r[:-1] for r in i["series"]])),
            js,
            400,
            "'series' has shape (2, 31, 4): expected (N, 32, 4)",
        ),  # fmt: skip
        "frames wrong shape": (
            with_(lambda i: i.update(frames=[f[:-1] for f in i["frames"]])),
            js,
            400,
            "'frames' has shape (2, 7, 1, 32, 32)",
        ),  # fmt: skip
        "frames NaN": (with_(put(["frames", 0, 0, 0, 0, 0], float("nan"))), js, 400, "uint8 frames with values 0..255"),
        "frames null": (with_(put(["frames", 0, 0, 0, 0, 0], None)), js, 400, "uint8 frames with values 0..255"),
        "frames out of range": (with_(put(["frames", 0, 0, 0, 0, 0], 300)), js, 400, "300 out of bounds for uint8"),
        "frames negative": (with_(put(["frames", 0, 0, 0, 0, 0], -1)), js, 400, "-1 out of bounds for uint8"),
        "series not numeric": (with_(put(["series", 0, 0, 0], "x")), js, 400, "could not convert string to float"),
        "series infinite": (with_(put(["series", 0, 0, 0], float("inf"))), js, 400, "'series' holds an infinite"),
        "batch sizes differ": (
            with_(lambda i: i.update(frames=i["frames"][:1])),
            js,
            400,
            "'series' has 2 samples and 'frames' 1",
        ),  # fmt: skip
        "unnamed inputs": (json.dumps({"inputs": [1, 2]}).encode(), js, 400, "expected named inputs 'series'"),
        "no inputs field": (b"{}", js, 400, "exactly one of the input fields"),
        "wrong content type": (b"a,b", {"Content-Type": "text/plain"}, 415, "only supports"),
        "oversized body": (b"x" * (5 * 2**20), js, 413, "the limit is 4 MB"),
    }


@pytest.mark.slow
def test_bad_requests_get_a_4xx_naming_the_input_and_the_server_keeps_answering(server):
    url, proc, root = server
    example_file = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion")) / "serving_input_example.json"
    example = json.loads(example_file.read_text())
    for kind, (body, headers, status, phrase) in bad_requests(example).items():
        r = requests.post(f"{url}/invocations", data=body, headers=headers, timeout=30)
        assert r.status_code == status, (kind, r.status_code, r.text[:500])
        err = r.json()
        assert phrase in err["message"], (kind, err["message"])
        assert "stack_trace" not in err and "Traceback" not in r.text, kind
        assert r.headers[VERSION_HEADER], kind
    assert len(bad_requests(example)) >= 10
    ok = requests.post(
        f"{url}/invocations", data=example_file.read_bytes(), headers={"Content-Type": "application/json"}
    )
    assert ok.status_code == 200 and proc.poll() is None


def raw_http(url: str, head: bytes, body: bytes = b"", closes: bool = True) -> tuple[int, dict[str, str], bytes, bool]:
    """One request written byte for byte on a socket (what `requests` will not send): `head` (the
    request line and headers, CRLF-terminated), then `body`, then silence. (status, headers, body,
    `closes`: whether the server closed the connection within 5 s of its answer, else False)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        t0 = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer after {time.monotonic() - t0:.1f} s: {data!r}"
            data += chunk
        top, rest = data.split(b"\r\n\r\n", 1)
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(rest) < int(headers["content-length"]):
            rest += sock.recv(65536)
        sock.settimeout(5)
        try:
            closed = closes and sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return int(lines[0].split()[1]), headers, rest, closed


@pytest.mark.slow
def test_framing_tricks_odd_header_bytes_and_a_stalled_body_get_a_4xx_never_a_500(server):
    """On the real server (h11 under uvicorn passes these on to the app): a body framed both by
    Content-Length and Transfer-Encoding is refused before it is sent (40 MB behind `Content-Length:
    1` were read whole and parsed); a request id that is not UTF-8 gets an answer and a fresh id (it
    gave a 500 and a traceback); a body that stops arriving gets a 408 after serve.read_timeout_seconds."""
    url, proc, root = server
    example = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion")) / "serving_input_example.json"
    body = example.read_bytes()
    post = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

    status, headers, answer, closed = raw_http(url, post + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n")
    assert status == 400 and "both Content-Length and Transfer-Encoding" in json.loads(answer)["message"], answer
    assert closed and headers[VERSION_HEADER]  # answered on the headers alone; the connection closed

    odd = b"X-Request-ID: \xff\xfe\x80\r\nUser-Agent: \xc3\x28\r\n"
    status, headers, answer, _ = raw_http(url, post + odd + f"Content-Length: {len(body)}\r\n".encode(), body, False)
    assert status == 200 and len(json.loads(answer)["predictions"]) == 2, answer
    assert re.fullmatch("[0-9a-f]{32}", headers["x-request-id"]), headers

    t0 = time.monotonic()
    status, _, answer, closed = raw_http(url, post + f"Content-Length: {len(body)}\r\n".encode(), body[:100])
    waited = time.monotonic() - t0
    assert status == 408 and "within 3 s (serve.read_timeout_seconds)" in json.loads(answer)["message"], answer
    assert closed and 2.5 < waited < 15, waited

    assert requests.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}).ok
    assert proc.poll() is None and "Traceback" not in (root / "serve.log").read_text()


@pytest.mark.slow
def test_answers_follow_the_alias_across_a_promotion_and_a_rollback_without_a_failed_request(server, project):
    url, _, root = server
    _, v1, v2 = project
    example = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{v1}")) / "serving_input_example.json"
    body = example.read_bytes()
    seen: list[tuple[float, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                r = requests.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                seen.append((time.monotonic(), r.headers.get(VERSION_HEADER, "")))
            except requests.RequestException as exc:
                errors.append(repr(exc))

    def wait_for(version: str, since: float) -> float:
        deadline = since + 30
        while time.monotonic() < deadline:
            if any(t > since and v == version for t, v in seen[-5:]):
                return time.monotonic() - since
            time.sleep(0.1)
        raise AssertionError(f"still not v{version} 30 s after the alias moved; seen {seen[-3:]}")

    assert champion_version() == v1
    client = threading.Thread(target=loop, daemon=True)
    client.start()
    try:
        t0 = time.monotonic()
        assert stfn_cmd(root, {}, "promote", v2, "--dataset", NAME).returncode == 0
        to_v2 = wait_for(v2, t0)
        t1 = time.monotonic()
        assert stfn_cmd(root, {}, "rollback", "--dataset", NAME).returncode == 0
        to_v1 = wait_for(v1, t1)
        time.sleep(1)
    finally:
        stop.set()
        client.join(timeout=60)
    assert errors == []
    versions = [v for _, v in seen]
    assert {v1, v2} <= set(versions) and versions[-1] == v1
    assert to_v2 < 30 and to_v1 < 30
    print(f"switched to v{v2} in {to_v2:.1f} s, back to v{v1} in {to_v1:.1f} s; {len(seen)} requests, 0 failed")

    # every answered row is in the inference log: when, which version, the input summary, the prediction
    time.sleep(2.5)  # the log is written every second (serve.log_flush_seconds)
    logged = InferenceLog.read(root / ".stfn" / "inference" / NAME)
    assert {v1, v2} <= set(logged["version"].astype(str))
    assert len(logged) >= 2 * len(seen)  # the example holds 2 samples
    for col in ("time", "request_id", "series_missing", "series_mean_zone-0", "frames_mean_0", "prediction", "prob_0"):
        assert col in logged.columns, col
    assert logged["series_missing"].between(0, 1).all()


def test_with_no_champion_serve_refuses_to_start_and_says_how_to_get_one(tmp_path, write_tiny_params):
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": "nothing-here"})
    proc = stfn_cmd(tmp_path, {}, "serve", "--port", str(free_port()), timeout=120)
    assert proc.returncode == 1
    assert "no model 'stfn-nothing-here@champion'" in proc.stderr and "stfn run" in proc.stderr
    assert "Traceback" not in proc.stderr
