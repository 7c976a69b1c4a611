"""`make ui` (= `stfn ui`): the MLflow UI against the project's store on 127.0.0.1, the Prefect
UI's address when a server is configured, and a clean stop on Ctrl-C (nothing left running)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from teamlib import BIN, free_port


@pytest.mark.slow
def test_ui_serves_the_project_store_and_stops_cleanly_on_ctrl_c(tmp_path, write_tiny_params):
    write_tiny_params(tmp_path / "params.yaml")
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_API_URL": "http://127.0.0.1:4321/api"}
    env.pop("MLFLOW_TRACKING_URI")  # the project's own store: mlflow/mlflow.db
    proc = subprocess.Popen([str(BIN / "stfn"), "ui", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    # (started with SIGINT ignored, as a background job `cmd &` is: Ctrl-C must still stop it)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any("Ctrl-C" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            lines.append(proc.stdout.readline())
        said = "".join(lines)
        assert f"MLflow UI:  http://127.0.0.1:{port}" in said and "Prefect UI: http://127.0.0.1:4321" in said
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read(2000).lower()
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()  # the project's store, not ./mlruns
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the UI's server is gone with it
