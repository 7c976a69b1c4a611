"""What every command shares: the Typer app, the consoles, the project root, readable errors
(exit 2 for bad input, 1 otherwise; `--debug` shows the traceback) and the progress bars."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from stfn import progress
from stfn.config import find_project_root
from stfn.errors import ConfigError, DataValidationError, DvcError, TrackingError
from stfn.runtime import configure_environment, quiet_logs

app = typer.Typer(
    help="STFN pipeline: validate -> featurize -> train -> evaluate -> register spatio-temporal fusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, force_terminal=True if progress.forced() else None)
STATE: dict[str, Any] = {"debug": False}


def project_root() -> Path:
    root = find_project_root()
    configure_environment(root)
    return root


def fail(exc: BaseException, code: int) -> None:
    if STATE["debug"]:
        raise exc
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    err_console.print("[dim](run with --debug for the traceback)[/]")
    raise typer.Exit(code)


def guard(fn, *args, **kwargs):
    """Call `fn`, turning known error families into a readable message and an exit code."""
    try:
        return fn(*args, **kwargs)
    except (DataValidationError, ConfigError) as exc:
        fail(exc, 2)
    except (TrackingError, DvcError, FileNotFoundError, ValueError, RuntimeError) as exc:
        fail(exc, 1)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False) -> None:
    STATE["debug"] = debug
    root = logging.getLogger()
    if not any(isinstance(h, progress.ConsoleLogHandler) for h in root.handlers):
        # through the console that draws the progress bars: log lines scroll above them
        root.addHandler(
            progress.ConsoleLogHandler(err_console, "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.setLevel(logging.INFO)
    quiet_logs(debug)


def bars():
    """Progress bars on stderr while a command works (on a terminal, or STFN_PROGRESS=always)."""
    return progress.display(err_console, progress.wanted(err_console))
