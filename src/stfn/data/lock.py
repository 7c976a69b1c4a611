"""A dataset under data/raw/: its lock, and the undoing of an append that did not complete.

Writers of `data/raw/<name>` (`stfn ingest`, `stfn ingest --append`, `stfn import`, the retrain's
`dvc pull`) and a run's read of it (prepare, validate and featurize, `stfn.stages.prepare.pinned`)
hold the dataset's lock (filelock, `.stfn/locks/<name>.lock`), so a run reads one version, never
half an append. The lock belongs to the process (one object per file, shared by its threads): the
training flow holds it around its reading stages and each stage takes it again without waiting on
itself.

An append (`stfn.stages.ingest`) replaces the folder in steps, each announced first in its journal
(`.stfn/appends/<name>.json`: the step, where the previous folder is kept, the previous
`data/raw/<name>.dvc` file's text): the new version is written beside the dataset
(`data/raw/.<name>.append/next`), the current folder is moved aside (`.../previous`) and the new
one moved in, then `dvc add` and `dvc push`; the journal is removed last, and that is the moment
the append completes. Between the two moves the folder does not exist for an instant: only a holder
of the lock could look, and readers hold it. An append that fails undoes itself (`undo`); one that
was killed leaves its journal, and whoever takes the lock next undoes it before doing anything else:
the folder and its `.dvc` file are put back as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from stfn.config import Paths
from stfn.data.contract import NAME_RE
from stfn.errors import DataValidationError, Failure
from stfn.fileio import write_json, write_text

log = logging.getLogger(__name__)

LOCK_SECONDS = 600  # how long a writer or a run waits for the dataset: an append's `dvc push` takes seconds to minutes


def lock_file(paths: Paths, name: str) -> Path:
    return paths.state / "locks" / f"{name}.lock"


def journal_file(paths: Paths, name: str) -> Path:
    return paths.state / "appends" / f"{name}.json"


def work_dir(paths: Paths, name: str) -> Path:
    """Where an append keeps the new version before the swap and the previous one after it: beside
    the dataset, on the same file system, so that both moves are renames."""
    return paths.raw / f".{name}.append"


@contextlib.contextmanager
def held(paths: Paths, name: str, timeout: float = LOCK_SECONDS) -> Iterator[None]:
    """Hold dataset NAME's lock, waiting up to `timeout` seconds for another writer or run; an
    append a killed process left half done is undone first. Raises DataValidationError on timeout."""
    path = lock_file(paths, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False, is_singleton=True)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        waited = f"its lock {path} within {timeout:g} s"
        raise DataValidationError(
            name, [Failure(str(paths.raw / name), None, waited, "another writer or run holds it")]
        ) from None
    try:
        if lock.lock_counter == 1 and (step := undo(paths, name)):  # a nested holder must not undo its own append
            log.warning(
                "an append to %s was stopped at %s: undone, %s is the previous version", name, step, paths.raw / name
            )
        yield
    finally:
        lock.release()


def reading(paths: Paths, folder: Path) -> contextlib.AbstractContextManager:
    """The lock for a read of `folder` when it is a dataset under data/raw/ (a folder elsewhere has
    no writer of ours: nothing to hold)."""
    folder = Path(folder)
    if NAME_RE.match(folder.name) and folder.parent.resolve() == paths.raw.resolve():
        return held(paths, folder.name)
    return contextlib.nullcontext()


class Journal:
    """One append in flight, under the dataset's lock: `start` (the journal, then the folder for
    the new version), `step` before each further step, `swap`, and `commit` at the end."""

    def __init__(self, paths: Paths, name: str):
        self.paths, self.name = paths, name
        self.target = paths.raw / name
        self.dvc_file = paths.raw / f"{name}.dvc"
        self.work = work_dir(paths, name)
        self.entry: dict[str, object] = {}

    def start(self) -> Path:
        """Record the step and the previous `.dvc` text; return the empty folder for the new version."""
        previous = self.dvc_file.read_text() if self.dvc_file.is_file() else None
        self.entry = {"pid": os.getpid(), "backup": str(self.work / "previous"), "dvc_file": previous}
        self.step("writing the new version")  # the journal first: a kill from here on is undone
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir()
        return self.work / "next"

    def step(self, step: str) -> None:
        self.entry["step"] = step
        write_json(journal_file(self.paths, self.name), self.entry)

    @property
    def current(self) -> str:
        return str(self.entry.get("step", "starting"))

    def swap(self) -> None:
        """The previous folder aside, the new one in its place (two renames)."""
        self.step("swapping the folders")
        os.replace(self.target, self.work / "previous")
        os.replace(self.work / "next", self.target)

    def commit(self) -> None:
        """The append is complete: the journal goes (from now on nothing is undone), then the backup."""
        journal_file(self.paths, self.name).unlink()
        shutil.rmtree(self.work, ignore_errors=True)


def undo(paths: Paths, name: str) -> str | None:
    """Put back the version an append did not complete (its journal is there), the lock held:
    the folder and `data/raw/<name>.dvc` as they were before it. Returns the step it had reached,
    None when there was nothing to undo. Every move is a rename and the journal goes last, so an
    undo that is itself killed is finished by the next."""
    journal, work, target = journal_file(paths, name), work_dir(paths, name), paths.raw / name
    if not journal.is_file():
        if work.exists():  # an append that completed, killed while clearing its backup away
            shutil.rmtree(work, ignore_errors=True)
        return None
    try:
        entry = json.loads(journal.read_text())
        step, dvc_text = entry["step"], entry["dvc_file"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataValidationError(
            name, [Failure(str(journal), None, "the journal of an append to undo", f"unreadable: {exc}")]
        ) from None
    previous = work / "previous"
    if previous.is_dir():  # the swap had begun: the previous version comes back
        if target.exists():
            discard = work / "discard"
            shutil.rmtree(discard, ignore_errors=True)
            os.replace(target, discard)
        os.replace(previous, target)
    dvc_file = paths.raw / f"{name}.dvc"
    if dvc_text is None:
        dvc_file.unlink(missing_ok=True)
    elif not dvc_file.is_file() or dvc_file.read_text() != dvc_text:
        write_text(dvc_file, dvc_text)
    shutil.rmtree(work, ignore_errors=True)
    journal.unlink()
    return str(step)
