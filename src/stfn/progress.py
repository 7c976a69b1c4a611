"""Progress of long work: data generation, validation, feature extraction, epochs, evaluation.

The library's loops take plain callbacks; the stages open a named bar here and hand its `update`
to them. Who shows the bars is the entry point's choice: `stfn` installs a rich display on a
terminal (`STFN_PROGRESS=always` forces it, `never` turns it off); everywhere else (DVC stages,
Prefect workers, tests) a bar costs nothing and the stages' log lines tell the story.

    with progress.bar("featurizing", total=n) as update:
        for i in ...:
            update(i + 1)                      # completed so far
            update(i + 1, info="loss=0.42")    # with a short status text
            update(info="epoch 2 done", refresh=True)  # drawn now, not at the next tick (4/s)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Update = Callable[..., None]

_display: Any = None  # the rich Progress while one is installed


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


@contextmanager
def bar(description: str, total: float | None = None) -> Iterator[Update]:
    """A bar on the installed display (nothing without one); completes when the block ends
    normally, stays where it stopped when the block raises."""
    display = _display
    if display is None:
        yield _noop
        return
    task = display.add_task(description, total=total, info="")
    state = {"total": total, "completed": 0.0}

    def update(
        completed: float | None = None, total: float | None = None, info: str | None = None, refresh: bool = False
    ) -> None:
        changes: dict[str, Any] = {}
        if completed is not None:
            changes["completed"] = state["completed"] = completed
        if total is not None:
            changes["total"] = state["total"] = total
        if info is not None:
            changes["info"] = info
        display.update(task, refresh=refresh, **changes)

    yield update
    end = state["total"] if state["total"] is not None else max(state["completed"], 1)
    display.update(task, completed=end, total=end)


def _mode() -> str:
    return os.environ.get("STFN_PROGRESS", "auto").strip().lower()


def forced() -> bool:
    """STFN_PROGRESS=always: bars even when stderr is not a terminal (a log file, CI)."""
    return _mode() in ("always", "1", "on", "true")


def wanted(console: Any) -> bool:
    """Whether to show bars: STFN_PROGRESS=always|never, else only on a terminal."""
    if _mode() in ("never", "0", "off", "false"):
        return False
    return forced() or bool(console.is_terminal)


class _RunFormatter(logging.Formatter):
    """Prefect's run loggers say "Finished in state Completed()" without saying what finished:
    name the task (or flow) run in the logger column."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if run and record.name.startswith("prefect."):  # a copy: other handlers see the record as it was
            record = logging.makeLogRecord({**record.__dict__, "name": f"{record.name} [{run}]"})
        return super().format(record)


class ConsoleLogHandler(logging.Handler):
    """Log records printed through a rich console, so that they scroll above live bars instead
    of tearing them; plain text (no markup, no highlighting)."""

    def __init__(self, console: Any, fmt: str, datefmt: str | None = None):
        super().__init__()
        self.console = console
        self.setFormatter(_RunFormatter(fmt, datefmt))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextmanager
def display(console: Any, enabled: bool = True) -> Iterator[None]:
    """Install a rich progress display on `console` for the duration of the block."""
    global _display
    if not enabled or _display is not None:
        yield
        return
    from rich.progress import (  # lazy: only a terminal with bars needs rich's progress machinery
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description:<12}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        refresh_per_second=4,
    ) as live:
        _display = live
        try:
            yield
        finally:
            _display = None
