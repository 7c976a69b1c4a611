"""What `stfn servers start` and `stfn deploy` would run, without running it: the database URLs
(and their passwords) and Prefect's auth string go to the servers' environment, not their command
lines; the basic-auth config file holds the users' database URL without its password; each child
gets only the allow-listed part of the caller's environment; what is shown of a URI is scrubbed
(tests/integration/test_secrets.py checks the same with real servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stfn.config import Paths
from stfn.ops.servers import auth_settings, child_env, commands, mask, prefect_auth_settings
from stfn.tracking import scrub_uri

PW = "pw-Xy7-not-in-argv"


def test_database_urls_go_by_environment_not_argv(tmp_path, monkeypatch):
    monkeypatch.setenv("STFN_DB_URL", f"postgresql://mlflow:{PW}@db:5432/mlflow")
    monkeypatch.setenv("STFN_PREFECT_DB_URL", f"postgresql+asyncpg://prefect:{PW}@db:5432/prefect")
    monkeypatch.setenv("STFN_ARTIFACTS_DESTINATION", f"sftp://user:{PW}@host/artifacts")
    monkeypatch.setenv("STFN_AUTH_DB_URL", f"postgresql://auth:{PW}@db:5432/auth")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:" + PW)
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


# --- Prefect's basic auth: the server wants PREFECT_API_AUTH_STRING, by environment only

AUTH = "admin:Pf-auth-Qz8-not-in-argv"


def test_prefect_auth_reaches_the_server_by_environment_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    specs = commands(Paths(tmp_path), "127.0.0.1", 5000, 4200, auth=True)
    assert specs["prefect"]["env"]["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    assert specs["prefect"]["auth"] == "basic-auth"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in specs["mlflow"]["env"]
    assert "PREFECT_API_AUTH_STRING" not in specs["mlflow"]["env"]
    for spec in specs.values():
        assert not [a for a in spec["argv"] if AUTH in a or "admin:" in a]
    assert not [p for p in (tmp_path / ".stfn").rglob("*") if p.is_file() and AUTH.encode() in p.read_bytes()]


def test_prefect_auth_is_refused_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    with pytest.raises(RuntimeError, match="PREFECT_API_AUTH_STRING"):
        commands(Paths(tmp_path), "127.0.0.1", 5000, 4200, auth=True)
    with pytest.raises(RuntimeError, match="PREFECT_API_AUTH_STRING"):
        prefect_auth_settings()


def test_without_auth_the_servers_get_no_auth_string(tmp_path, monkeypatch):
    """--no-auth means none: a PREFECT_SERVER_API_AUTH_STRING of the caller's does not turn it on
    behind our back (the record would say "none")."""
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", AUTH)
    specs = commands(Paths(tmp_path), "127.0.0.1", 5000, 4200, auth=False)
    assert "PREFECT_SERVER_API_AUTH_STRING" not in specs["prefect"]["env"]
    assert specs["prefect"]["auth"] == specs["mlflow"]["auth"] == "none"


# --- the environment of each child: an allow-list (servers.child_env)

CALLER = {
    "AWS_SECRET_ACCESS_KEY": "x",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "GITHUB_TOKEN": "ghp_example",
    "SOME_APP_PASSWORD": "hunter2",
    "MLFLOW_TRACKING_PASSWORD": "client-" + PW,
    "PREFECT_API_KEY": "pnu_cloud_key",
    "STFN_DB_URL": f"postgresql://mlflow:{PW}@db:5432/mlflow",
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/someone",
    "LC_ALL": "C.UTF-8",
}


@pytest.fixture
def caller(monkeypatch):
    for k, v in CALLER.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-" + PW)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    monkeypatch.delenv("STFN_WORKER_ENV", raising=False)
    monkeypatch.delenv("STFN_ARTIFACTS_DESTINATION", raising=False)


def _never_secret(env: dict[str, str]) -> None:
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "GITHUB_TOKEN", "SOME_APP_PASSWORD", "STFN_DB_URL"):
        assert name not in env, name


@pytest.mark.parametrize("auth", [False, True])
def test_servers_get_only_what_they_need(tmp_path, caller, auth):
    specs = commands(Paths(tmp_path), "127.0.0.1", 5000, 4200, auth=auth)
    mlflow, prefect = specs["mlflow"]["env"], specs["prefect"]["env"]
    for env in (mlflow, prefect):
        _never_secret(env)
        assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == "/home/someone" and env["LC_ALL"] == "C.UTF-8"
    assert "MLFLOW_TRACKING_PASSWORD" not in mlflow  # a client's credentials, not the server's
    assert not [k for k in prefect if k.startswith("MLFLOW_")]  # nothing of the other server's
    assert not [k for k in mlflow if k.startswith("PREFECT_")]
    assert "PREFECT_API_KEY" not in prefect
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")  # what it does need
    if auth:
        assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == "admin-" + PW  # MLflow's auth app reads it from there


def test_an_s3_artifacts_destination_gives_the_aws_keys_to_mlflow_only(tmp_path, caller, monkeypatch):
    monkeypatch.setenv("STFN_ARTIFACTS_DESTINATION", "s3://bucket/mlflow")
    specs = commands(Paths(tmp_path), "127.0.0.1", 5000, 4200)
    assert specs["mlflow"]["env"]["AWS_SECRET_ACCESS_KEY"] == "x"
    assert "AWS_SECRET_ACCESS_KEY" not in specs["prefect"]["env"]
    assert "GITHUB_TOKEN" not in specs["mlflow"]["env"]


def test_the_worker_and_the_prefect_commands_get_the_auth_string_and_no_other_secret(caller, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", AUTH)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"postgresql+asyncpg://p:{PW}@db/prefect")
    worker = child_env("worker", {"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    client = child_env("prefect-client", {"STFN_RETRAIN_POOL": "pool"})
    for env in (worker, client):
        _never_secret(env)
        assert env["PREFECT_API_AUTH_STRING"] == AUTH
        assert "PREFECT_SERVER_API_AUTH_STRING" not in env and "PREFECT_API_DATABASE_CONNECTION_URL" not in env
    assert worker["MLFLOW_TRACKING_PASSWORD"] == "client-" + PW  # the flow runs log to MLflow
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in worker  # the server's admin is not the flows'
    assert client["STFN_RETRAIN_POOL"] == "pool" and "MLFLOW_TRACKING_PASSWORD" not in client
    monkeypatch.setenv("STFN_WORKER_ENV", "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY")  # e.g. a DVC remote on S3
    assert child_env("worker")["AWS_SECRET_ACCESS_KEY"] == "x"
    assert "AWS_SECRET_ACCESS_KEY" not in child_env("prefect-client")


def test_start_and_deploy_hand_their_children_the_allow_listed_environment(tmp_path, caller, monkeypatch):
    """What `stfn servers start` and `stfn deploy` really pass to Popen / run, the processes faked."""
    import subprocess
    from types import SimpleNamespace

    from stfn.config import load_params
    from stfn.ops import deploy as deploy_mod
    from stfn.ops import servers

    started: list[dict] = []

    class FakePopen:
        def __init__(self, argv, env, **kwargs):
            started.append({"argv": argv, "env": env})
            self.pid, self.returncode = 999_999, None

        def poll(self):
            return None

    ran: list[dict] = []

    def fake_run(argv, env, **kwargs):
        ran.append({"argv": argv, "env": env})
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    fake = {"DEVNULL": subprocess.DEVNULL, "STDOUT": subprocess.STDOUT}
    monkeypatch.setattr(servers, "subprocess", SimpleNamespace(Popen=FakePopen, **fake))
    monkeypatch.setattr(servers, "_wait_healthy", lambda *a, **k: None)
    monkeypatch.setattr(deploy_mod, "subprocess", SimpleNamespace(run=fake_run, **fake))
    paths = Paths(tmp_path)
    servers.start(paths, mlflow_port=5999, prefect_port=4999, auth=True)
    monkeypatch.setattr(servers, "_alive", lambda pid: False)  # no worker recorded as running
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4999/api")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    out = deploy_mod.deploy(params, paths, start_worker=True)
    assert len(started) == 3 and len(ran) >= 2  # two servers and the worker; work pool(s) and `prefect deploy`
    for child in (*started, *ran):
        _never_secret(child["env"])
        assert not [a for a in child["argv"] if AUTH in a or PW in a]
    prefect_server, worker = started[1]["env"], started[2]["env"]
    assert prefect_server["PREFECT_SERVER_API_AUTH_STRING"] == AUTH
    assert worker["PREFECT_API_AUTH_STRING"] == AUTH and worker["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert all(r["env"]["PREFECT_API_AUTH_STRING"] == AUTH for r in ran)
    assert out["auth"] is True


# --- what is printed: scrubbed URIs, masked secrets


def test_prefect_addresses_shown_are_scrubbed(tmp_path, monkeypatch):
    from stfn.ops.servers import prefect_ui_url, ui_of_api

    assert ui_of_api(f"http://u:{PW}@h:4200/api") == "http://u:***@h:4200"
    monkeypatch.setenv("PREFECT_API_URL", f"https://:{PW}@prefect.example.com/api?token={PW}")
    assert PW not in prefect_ui_url(Paths(tmp_path))


def test_a_failed_prefect_command_shows_no_secret(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from stfn.ops import deploy as deploy_mod

    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    said = (
        f"PREFECT_API_URL=http://admin:{PW}@127.0.0.1:4200/api auth {AUTH}\n"
        "Client error '401 Unauthorized' for url 'http://127.0.0.1:4200/api/work_pools/'"
    )
    failed = SimpleNamespace(returncode=1, stdout="", stderr=said)
    monkeypatch.setattr(deploy_mod, "subprocess", SimpleNamespace(run=lambda *a, **k: failed, DEVNULL=None))
    with pytest.raises(RuntimeError) as err:
        deploy_mod._prefect(["work-pool", "ls"], {}, tmp_path)
    message = str(err.value)
    assert PW not in message and AUTH not in message
    assert "http://admin:***@127.0.0.1:4200/api" in message and "set PREFECT_API_AUTH_STRING" in message
    assert mask(f"x {AUTH} y") == "x *** y"


# --- scrub_uri: the password of the user info, secret query parameters, in any text

SCHEMES = ("postgresql", "postgresql+psycopg2", "http", "https")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("//:pw-Xy7@db:5432/x", "//:***@db:5432/x"),  # no user, a password
        ("//u:pw-Xy7@db/x", "//u:***@db/x"),
        ("//u:p@ss@w@rd-Xy7@db:5432/x", "//u:***@db:5432/x"),  # "@" in the password: all of it hidden
        ("//u:p%40ss-Xy7@db/x", "//u:***@db/x"),  # escaped
        ("//u:a/b?c#d-Xy7@db/x", "//u:***@db/x"),  # unescaped "/?#", as SQLAlchemy reads them
        ("//db/x?password=pw-Xy7&sslmode=require", "//db/x?password=***&sslmode=require"),
        ("//db/x?user=u&pwd=pw-Xy7", "//db/x?user=u&pwd=***"),
        ("//db/x?sslmode=require&token=pw-Xy7&secret=pw-Xy7&api_key=pw-Xy7&key=pw-Xy7",
         "//db/x?sslmode=require&token=***&secret=***&api_key=***&key=***"),
        ("//db/x?X-Amz-Credential=pw-Xy7&X-Amz-Signature=pw-Xy7", "//db/x?X-Amz-Credential=***&X-Amz-Signature=***"),
        ("//:pw-Xy7@db/x?password=pw-Xy7", "//:***@db/x?password=***"),
        ("//h/#access_token=pw-Xy7&x=1", "//h/#access_token=***&x=1"),
    ],
)  # fmt: skip
def test_scrub_uri_hides_every_password(scheme, uri, shown):
    assert scrub_uri(f"{scheme}:{uri}") == f"{scheme}:{shown}"
    assert "Xy7" not in scrub_uri(f"{scheme}:{uri}")


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://mlflow@db:5432/mlflow?sslmode=require",
        "http://127.0.0.1:4200/api",
        "https://h:8443/p?email=a@b.example&next=/x",  # an "@" after the authority is no user info
        "sqlite:////abs/path/mlflow.db",  # not rewritten to sqlite:/abs/... (as urlunsplit would)
        "file:///tmp/a@b",
        "http://[::1]:5000/x@y",
        "s3://bucket/mlflow",
        "http://u:@h/x",
    ],
)
def test_scrub_uri_leaves_the_rest_as_written(uri):
    assert scrub_uri(uri) == uri


def test_scrub_uri_finds_the_uris_in_a_text():
    text = (
        "export PREFECT_API_URL=http://:pw1-Xy7@h:4200/api MLFLOW_TRACKING_URI=https://u:p@w2-Xy7@m:5000;"
        "a=postgresql://u:pw3-Xy7@db/x,b=http://v:pw4-Xy7@h2 ['https://h/login?next=http://w:pw5-Xy7@x']"
    )
    scrubbed = scrub_uri(text)
    assert "Xy7" not in scrubbed
    assert scrubbed.startswith(
        "export PREFECT_API_URL=http://:***@h:4200/api MLFLOW_TRACKING_URI=https://u:***@m:5000;"
    )
    assert "b=http://v:***@h2" in scrubbed and "next=http://w:***@x" in scrubbed
