"""What `stfn servers start` would run, without running it: the database URLs (and their
passwords) go to the servers' environment, not their command lines, and the basic-auth config
file holds the users' database URL without its password (tests/integration/test_secrets.py
checks the same with real servers)."""

from __future__ import annotations

import pytest

from stfn.config import Paths
from stfn.ops.servers import auth_settings, commands

PW = "pw-Xy7-not-in-argv"


def test_database_urls_go_by_environment_not_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("STFN_DB_URL", f"postgresql://mlflow:{PW}@db:5432/mlflow")
    monkeypatch.setenv("STFN_PREFECT_DB_URL", f"postgresql+asyncpg://prefect:{PW}@db:5432/prefect")
    monkeypatch.setenv("STFN_ARTIFACTS_DESTINATION", f"sftp://user:{PW}@host/artifacts")
    monkeypatch.setenv("STFN_AUTH_DB_URL", f"postgresql://auth:{PW}@db:5432/auth")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    specs = commands(Paths(tmp_path), "127.0.0.1", 5000, 4200, auth=True)
    for spec in specs.values():
        assert not [a for a in spec["argv"] if PW in a]
    env = specs["mlflow"]["env"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"postgresql+psycopg2://mlflow:{PW}@db:5432/mlflow"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"sftp://user:{PW}@host/artifacts"
    assert env["PGPASSWORD"] == PW
    assert specs["prefect"]["env"]["PREFECT_API_DATABASE_CONNECTION_URL"].endswith(f":{PW}@db:5432/prefect")
    ini = (tmp_path / ".stfn" / "servers" / "basic_auth.ini").read_text()
    assert "database_uri = postgresql+psycopg2://auth@db:5432/auth\n" in ini and PW not in ini


def test_auth_database_without_password_gets_no_pgpassword(tmp_path, monkeypatch):
    monkeypatch.delenv("STFN_AUTH_DB_URL", raising=False)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    env = auth_settings(Paths(tmp_path))
    assert "PGPASSWORD" not in env
    assert "database_uri = sqlite:///" in (tmp_path / ".stfn" / "servers" / "basic_auth.ini").read_text()


def test_a_password_only_a_file_could_carry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("STFN_AUTH_DB_URL", f"mysql+pymysql://auth:{PW}@db/auth")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    with pytest.raises(RuntimeError, match="PGPASSWORD"):
        auth_settings(Paths(tmp_path))
    assert not (tmp_path / ".stfn" / "servers" / "basic_auth.ini").exists()
