"""Commands of team mode: `stfn servers` (Prefect and MLflow servers), `stfn ui` (the MLflow UI),
`stfn deploy` (work pools, scheduled deployments, a worker)."""

from __future__ import annotations

from typing import Annotated

import typer

from stfn.cli.common import console, fail, guard, project_root
from stfn.config import Paths, load_params


def servers(
    action: Annotated[str, typer.Argument(help="start | stop | status")],
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Basic auth on both servers: MLflow's basic-auth app and Prefect's API auth string "
            "(default: STFN_MLFLOW_AUTH=1).",
        ),
    ] = None,
) -> None:
    """Team mode: start / stop a Prefect server and an MLflow tracking server (PID files under
    .stfn/servers). MLflow uses PostgreSQL when STFN_DB_URL is set, Prefect when
    STFN_PREFECT_DB_URL is set; SQLite otherwise. With --auth every MLflow request needs a user
    (admin password from MLFLOW_AUTH_ADMIN_PASSWORD) and every Prefect request the auth string
    of PREFECT_API_AUTH_STRING (user:password), which its clients send too.

    Example: STFN_DB_URL=postgresql://postgres@127.0.0.1:5432/mlflow stfn servers start
    """
    root = project_root()
    from stfn.ops import servers as srv
    from stfn.tracking import scrub_uri  # every URI we print: no password shown

    paths = Paths(root)
    if action == "start":
        info = guard(srv.start, paths, host, mlflow_port, prefect_port, auth=auth)
        for name, rec in info.items():
            extra = " (already running)" if rec.get("already_running") else ""
            extra += " with basic auth" if rec.get("auth") == "basic-auth" else ""
            console.print(
                f"{name}: {scrub_uri(rec['url'])} on {rec['backend']}, pid {rec['pid']}{extra}; log {rec['log']}"
            )
        console.print(
            f"point the pipeline at them:\n  export MLFLOW_TRACKING_URI={scrub_uri(info['mlflow']['url'])} "
            f"PREFECT_API_URL={scrub_uri(info['prefect']['url'])}\nstop them: make servers-stop",
            soft_wrap=True,  # one line, whatever the terminal's width: it is copied and pasted
        )
        if any(rec.get("auth") == "basic-auth" for rec in info.values()):
            console.print(
                "and their credentials (not shown): MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD and "
                "PREFECT_API_AUTH_STRING (the user:password the Prefect server was started with)",
                soft_wrap=True,
            )
    elif action == "stop":
        stopped = srv.stop(paths)
        console.print("stopped " + ", ".join(stopped) if stopped else "no servers recorded as started")
    elif action == "status":
        for name, rec in srv.status(paths).items():
            state = "running" if rec["running"] else "NOT running"
            console.print(f"{name}: {scrub_uri(rec['url'])} {state} (pid {rec['pid']})")
    else:
        fail(ValueError(f"unknown action '{action}' (start | stop | status)"), 2)


def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
) -> None:
    """The MLflow UI against the project's tracking store (and the Prefect UI's address when a
    Prefect server is configured); Ctrl-C stops it and everything it started.

    Example: stfn ui --port 5001
    """
    root = project_root()
    from stfn.ops import servers as srv

    def ready(urls: dict[str, str | None]) -> None:
        console.print(f"MLflow UI:  [bold]{urls['mlflow']}[/]")
        if urls.get("prefect"):
            console.print(f"Prefect UI: [bold]{urls['prefect']}[/]")
        else:
            console.print("Prefect UI: none configured (`make servers` starts a Prefect server with its UI)")
        if urls.get("started"):
            console.print("[dim]Ctrl-C stops the MLflow UI[/]")
        else:
            console.print("(the tracking server is the MLflow UI: nothing to start)")

    code = guard(srv.ui, Paths(root), host, port, ready)  # its URLs come scrubbed
    raise typer.Exit(code)


def deploy(
    worker: Annotated[bool, typer.Option(help="Also start a process worker for the retrain pool.")] = True,
) -> None:
    """Scheduled retraining and monitoring: create the work pool(s), deploy prefect.yaml's
    `retrain-scheduled` (cron and timezone from params.yaml `retrain`), `watch` (the monitor flow,
    cron from `monitor`; `training-pipeline/train` too when `train.work_pool` is set) to the Prefect
    server, and start a process worker. Needs a server: `make servers`.

    Example: make servers && stfn deploy
    """
    root = project_root()
    params = guard(load_params, Paths(root).params_file)
    from stfn.ops.deploy import deploy as do_deploy
    from stfn.ops.servers import ui_of_api

    out = guard(do_deploy, params, Paths(root), worker)
    console.print(f"deployed {', '.join(out['deployments'])} to {out['api_url']} (pools {', '.join(out['pools'])})")
    console.print(f"schedule: {out['schedule']}; at most one retrain at a time (CANCEL_NEW)")
    console.print(f"monitor/watch: {out['monitor_schedule']}, the inference log; a batch: -p path=FOLDER")
    if "worker" in out:
        console.print(f"worker for {out['pools'][0]}: pid {out['worker']['pid']}, log {out['worker']['log']}")
        console.print(f"scheduled runs log to MLflow at {out['tracking_uri']}", soft_wrap=True)
    auth = " (PREFECT_API_AUTH_STRING exported)" if out.get("auth") else ""  # its value is not ours to print
    console.print(
        f"run one now: PREFECT_API_URL={out['api_url']} .venv/bin/prefect deployment run retrain/retrain-scheduled"
        f"{auth}\n"
        f"watch it:    {ui_of_api(out['api_url'])}/deployments (the Prefect UI)\n"
        "stop all:    make servers-stop",
        soft_wrap=True,
    )
