"""Team mode with MLflow's basic-auth app (`stfn servers start --auth`): an unauthenticated or
wrongly authenticated request is refused, the admin's is served, the pipeline's tracking calls
work with MLFLOW_TRACKING_USERNAME/PASSWORD, and the password is written nowhere by us."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest
from teamlib import free_port, stfn_cmd

PASSWORD = "s3cret-Test-pass-42"


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    req = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.integration
def test_basic_auth_refuses_anonymous_requests_and_serves_users(tmp_path, monkeypatch):
    mp, pp = free_port(), free_port()
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}
    refused = stfn_cmd(tmp_path, {}, "servers", "start", "--auth", "--mlflow-port", str(mp), "--prefect-port", str(pp))
    assert refused.returncode == 1 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr  # no default password
    started = stfn_cmd(tmp_path, env, "servers", "start", "--auth", "--mlflow-port", str(mp), "--prefect-port", str(pp))
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "with basic auth" in started.stdout
        api = f"http://127.0.0.1:{mp}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api) == 401  # anonymous: refused
        assert _get(api, "admin", "wrong") == 401
        assert _get(api, "admin", PASSWORD) == 200

        import mlflow
        from stfn import tracking

        url = f"http://127.0.0.1:{mp}"
        for k, v in {"MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
                     "MLFLOW_TRACKING_PASSWORD": PASSWORD}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
        before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        try:
            tracking.configure(tmp_path / "mlflow")
            run_id = tracking.start_run("auth", tmp_path / "mlflow", "auth", {})
            tracking.log_metrics(run_id, {"x": 1.0}, step=1)
            assert mlflow.MlflowClient(url).get_run(run_id).data.metrics["x"] == 1.0
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
            with pytest.raises(Exception, match="401|Unauthorized|credentials"):
                tracking.log_metrics(run_id, {"x": 2.0}, step=2)  # refused at once: not retried as "unreachable"
        finally:
            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])
    finally:
        stfn_cmd(tmp_path, {}, "servers", "stop")
    written = [p for p in (tmp_path / ".stfn").rglob("*") if p.is_file()]
    assert written and not [p for p in written if PASSWORD.encode() in p.read_bytes()]
    assert oct((tmp_path / ".stfn" / "servers" / "flask-secret-key").stat().st_mode & 0o777) == "0o600"
