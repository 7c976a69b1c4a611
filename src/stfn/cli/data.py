"""Commands that bring data in: `stfn import` (a real recording that ships in a package), `stfn
validate` (a folder against its dataset.yaml), `stfn ingest` (copy or append into data/raw/, DVC)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from stfn.cli.common import bars, console, fail, guard, project_root
from stfn.config import Paths, load_params


def import_(
    name: Annotated[
        str,
        typer.Argument(help="Which recording: irish-wind | german-pm10 | colorado-temperature | southern-germany-flu."),
    ],
    source: Annotated[
        Path | None,
        typer.Option(help="The file or folder to read (e.g. wind.rda or a r-cran-gstat .deb); default: fetch it."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Import a real recording that ships inside a package as a dataset in the contract,
    validate it (params.yaml, its `datasets.<name>` section, --set), and track it with DVC.

    irish-wind: daily wind at 12 Irish stations 1961-1978 (gstat's wind.rda; fetched with
    `apt-get download r-cran-gstat` on Debian/Ubuntu, or give --source).

    german-pm10: daily PM10 at 31 German rural stations 2002-2009, with their real gaps
    (spacetime's air.rda; `apt-get download r-cran-spacetime`, or give --source).

    colorado-temperature: monthly mean temperature at the 20 most complete stations in and
    around Colorado 1895-1997, with their gaps (fields' COmonthlyMet.rda; `apt-get download
    r-cran-fields`, or give --source).

    southern-germany-flu: weekly influenza cases in the 20 busiest districts of Bavaria and
    Baden-Wuerttemberg 2001-2008 (surveillance's fluBYBW.RData; `apt-get download
    r-cran-surveillance`, or give --source: the .deb or its unpacked folder).

    Example: stfn import irish-wind && stfn run --dataset irish-wind
    """
    root = project_root()
    params = guard(load_params, Paths(root).params_file, [f"data.dataset={name}", *(set_ or [])])
    from stfn.data import importers, seasonal
    from stfn.stages.validate import validate_folder

    recordings = importers.IMPORTERS | seasonal.IMPORTERS  # seasonal builds on importers: two registries, no cycle
    if name not in recordings:
        fail(ValueError(f"unknown recording '{name}'; available: {', '.join(recordings)}"), 2)
    paths = Paths(root)
    target = paths.raw / name
    if target.exists() and not force:
        fail(FileExistsError(f"{target} already exists (use --force to replace it)"), 2)
    staged = paths.state / "imports" / name  # built and validated here; data/raw/ gets it only when valid
    shutil.rmtree(staged, ignore_errors=True)
    try:
        recordings[name](staged, paths.state / "cache" / name, source)
    except importers.ImportError_ as exc:
        fail(exc, 2)
    with bars():
        s = guard(validate_folder, staged, name, params.data.max_missing_ratio, paths)
    from stfn.fileio import atomic_dir

    with _writing(paths, name):
        with atomic_dir(target) as tmp:
            for f in staged.iterdir():
                shutil.move(f, tmp / f.name)
        shutil.rmtree(staged, ignore_errors=True)
        _track(
            root,
            target,
            f"[green]imported[/] {name} -> {target}: {s['n_samples']} samples, {s['expectations']} expectations passed",
        )


def validate(
    path: Annotated[Path, typer.Argument(help="A dataset folder in the contract.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Validate a dataset folder against its dataset.yaml (Great Expectations), with the settings
    of params.yaml, its `datasets.<name>` section for this dataset, and --set.

    Example: stfn validate data/raw/moving-digits
    """
    root = project_root()
    _, params = _dataset_params(root, path, set_)
    from stfn.stages.validate import validate_folder

    with bars():
        s = guard(validate_folder, path, path.resolve().name, params.data.max_missing_ratio, Paths(root))
    console.print(
        f"[green]ok[/] {s['dataset']}: {s['expectations']} expectations passed on {s['n_samples']} samples "
        f"in {s['seconds']} s; report: {s['report']} (+ .html)"
    )
    for hint in s.get("hints", []):
        console.print(f"[yellow]hint:[/] {hint}", soft_wrap=True)


def ingest(
    path: Annotated[Path, typer.Argument(help="A dataset folder in the contract.")],
    force: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    append: Annotated[
        str | None, typer.Option(help="Add the batch to this ingested dataset (a new DVC version) instead.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Validate a dataset folder (params.yaml, its `datasets.<name>` section, --set), copy it to
    data/raw/<name>/ and track it with DVC. With --append NAME: validate it as a batch of dataset
    NAME (same contract, new sample ids), add its samples (split like NAME's) and record the new
    version with DVC.

    Example: stfn ingest ~/my-dataset --set data.max_missing_ratio=0.25 && stfn run --dataset my-dataset
    """
    root = project_root()
    spec, params = _dataset_params(root, path, set_)
    from stfn.data import contract
    from stfn.fileio import atomic_dir
    from stfn.stages.validate import validate_folder

    paths = Paths(root)
    if append:
        from stfn.stages.ingest import append as append_batch

        with bars():
            out = guard(append_batch, params, paths, path, append)
        console.print(
            f"[green]appended[/] {out['added']} samples to {out['dataset']} ({out['total']} now; split "
            f"{out['split']}: {out['splits']}); {out['dvc']}"
        )
        console.print(f"next: stfn run --dataset {out['dataset']}")
        return
    with bars():
        guard(validate_folder, path, spec.name, params.data.max_missing_ratio, paths)
    target = paths.raw / spec.name
    with _writing(paths, spec.name):  # from the check to `dvc add`: no other writer, no run reading it
        if target.exists() and not force:
            fail(FileExistsError(f"{target} already exists (use --force to replace it, --append to add to it)"), 2)
        with atomic_dir(target) as tmp:
            for f in contract.CONTRACT_FILES:
                shutil.copy2(path / f, tmp / f)
        _track(root, target, f"[green]ingested[/] {spec.name} -> {target}")


@contextlib.contextmanager
def _writing(paths: Paths, name: str) -> Iterator[None]:
    """Dataset NAME's lock for a writer (stfn.data.lock: shared with appends and runs; an append
    left half done is undone first); a lock not had in time is refused like bad input, exit 2."""
    from stfn.data import lock

    with contextlib.ExitStack() as stack:
        guard(stack.enter_context, lock.held(paths, name))
        yield


def _dataset_params(root: Path, folder: Path, sets: list[str] | None):
    """The dataset in `folder` (its dataset.yaml) and params.yaml for it: its own `datasets.<name>`
    section applied, then the command line's --set. dataset.yaml is read by the contract's reader,
    the one every command goes through: a broken one is refused here (exit 2), naming it."""
    from stfn.data.contract import load_spec

    spec = guard(load_spec, folder)
    return spec, guard(load_params, Paths(root).params_file, [f"data.dataset={spec.name}", *(sets or [])])


def _track(root: Path, folder: Path, msg: str) -> None:
    """`dvc add` a dataset folder under data/raw/ (in a DVC repo), then say what to run next."""
    from stfn.ops import versioning

    if versioning.is_dvc_initialised(root):
        guard(versioning.dvc, root, "add", str(folder.relative_to(root)))
        msg += f"; tracked by DVC ({folder.relative_to(root)}.dvc: commit it with git)"
    console.print(msg)
    console.print(f"next: stfn run --dataset {folder.name}")
