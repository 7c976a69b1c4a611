"""Stage `prepare`: make sure the dataset exists. A built-in dataset is generated (again, when
its parameters changed); in a DVC repo, through `dvc repro prepare`. A user's folder is checked
for presence only (validation comes next). DVC: `python -m stfn.stages.prepare`.

A run reads an ingested dataset under its lock (`pinned`: prepare, validate and featurize, see
`stfn.data.lock`), so it reads one version, never half an append; the version it read is recorded
as `data_md5` (validate's hash of the folder) and, when `data/raw/<name>.dvc` is there, `dvc_md5`
(the md5 that file records: DVC's hash of the same folder, `data_md5` + `.dir` when the workspace
holds the recorded version). Training reads the features and runs without the lock."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from stfn import progress
from stfn.config import Params, Paths, load_params
from stfn.data import contract, lock, moving_digits
from stfn.errors import DataValidationError, Failure
from stfn.ops import versioning
from stfn.runtime import stage_context

log = logging.getLogger(__name__)

BUILTIN = {"moving-digits"}


def prepare(params: Params, paths: Paths, force: bool = False) -> Path:
    """Make sure the dataset exists: generate a built-in one (again, when its parameters changed),
    or check that a user's folder is there."""
    name = params.data.dataset
    folder = paths.dataset_dir(name)
    if name not in BUILTIN:
        with lock.reading(paths, folder):  # a half-done append is undone first; never the instant of a swap
            present = (folder / contract.SPEC_FILE).is_file()
        if not present:
            raise DataValidationError(
                folder.name,
                [
                    Failure(
                        str(folder),
                        None,
                        "a dataset folder in the contract",
                        f"not found; built-in datasets: {sorted(BUILTIN)}, or bring your own with `stfn ingest PATH`",
                    )
                ],
            )
        return folder
    p = params.prepare.moving_digits
    wanted = {"generator": name, "params": p.model_dump(mode="json")}
    if not force and (folder / contract.SPEC_FILE).is_file():
        try:
            current = contract.load_spec(folder).source
        except DataValidationError:
            current = None
        if current == wanted:
            log.info("dataset %s is up to date at %s", name, folder)
            return folder
    log.info("generating %s (%d train / %d val / %d test samples)", name, p.n_train, p.n_val, p.n_test)
    with progress.bar("generating", p.n_train + p.n_val + p.n_test) as update:
        done: dict[str, int] = {}

        def generated(split: str, n: int, _total: int) -> None:
            done[split] = n
            update(sum(done.values()), info=f"{name}: {split} samples")

        spec, samples, series, frames = moving_digits.make_moving_digits(p, name, generated)
        update(info=f"{name}: writing {folder}")
        return contract.write_dataset(folder, spec, samples, series, frames)


def prepare_versioned(params: Params, paths: Paths) -> dict[str, Any]:
    """`prepare`, through DVC when it can be: in a DVC repo, for the built-in dataset that
    `dvc.yaml` declares with the parameters of `params.yaml`, run `dvc repro prepare` (it skips
    when nothing changed) and push to the default remote; otherwise call `prepare` directly. The
    data version DVC records goes into `dvc_md5`: dvc.lock's for the built-in dataset, the
    `data/raw/<name>.dvc` file's for an ingested one."""
    info: dict[str, Any] = {"dvc": "skipped (not a DVC repo)"}
    reproduced = False
    if params.data.dataset not in BUILTIN and versioning.is_dvc_initialised(paths.root):
        tracked = paths.dataset_dir(params.data.dataset).with_suffix(".dvc")
        info["dvc"] = "data not tracked by DVC (stfn ingest / stfn import track it)"
        if tracked.is_file() and tracked.is_relative_to(paths.root):
            info["dvc"] = f"data tracked by {tracked.relative_to(paths.root)}"
            info["dvc_md5"] = versioning.tracked_md5(tracked)  # read under the run's lock (`pinned`)
    elif versioning.is_dvc_repo(paths.root):
        declared = load_params(paths.params_file)
        same = params.data.dataset == declared.data.dataset == "moving-digits" and params.prepare == declared.prepare
        if same:
            result = versioning.reproduce(paths.root, "prepare")
            info["dvc"] = result["output"] + (" (pushed to the DVC remote)" if result["pushed"] else "")
            info["dvc_md5"] = versioning.locked_md5(paths.root, "prepare", "data/raw/moving-digits")
            log.info("dvc: %s", info["dvc"])
            reproduced = True
        else:
            info["dvc"] = "skipped (prepare parameters differ from params.yaml)"
    # after `dvc repro prepare` the dataset is there, made by the same `prepare`: not checked again
    info["folder"] = str(paths.dataset_dir(params.data.dataset) if reproduced else prepare(params, paths))
    return info


def pinned(params: Params, paths: Paths) -> contextlib.AbstractContextManager:
    """The run's read of its dataset (prepare, validate, featurize) under the dataset's lock: no
    append or ingest lands in between, and one a killed process left half done is undone first.
    The stages take the lock again themselves (the process's own: no wait), for callers without
    this. Nothing to hold for the built-in dataset, which `prepare` makes, or a folder outside
    data/raw/."""
    if params.data.dataset in BUILTIN:
        return contextlib.nullcontext()
    return lock.reading(paths, paths.dataset_dir(params.data.dataset))


def refresh_data(params: Params, paths: Paths) -> str:
    """Before a scheduled retrain: bring the newest recorded data version into the workspace.
    A built-in dataset is reproduced by `prepare` (`dvc repro prepare`); an ingested or imported
    one is pulled from the DVC remote when its `.dvc` file is there."""
    if not versioning.is_dvc_initialised(paths.root):
        return "not a DVC repo: using the workspace data"
    if params.data.dataset in BUILTIN:
        return "built-in dataset: `dvc repro prepare` brings it up to date"
    folder = paths.dataset_dir(params.data.dataset)
    tracked = folder.with_suffix(".dvc")
    with lock.reading(paths, folder):  # a writer of the folder: no run reads it mid-pull
        if not tracked.is_file():
            return f"{tracked.name} not found: using the workspace data"
        return versioning.pull(paths.root, str(tracked.relative_to(paths.root)))


def main() -> None:
    """`python -m stfn.stages.prepare` (dvc.yaml): regenerate the built-in dataset."""
    params, paths = stage_context()
    print(prepare(params, paths, force=True))


if __name__ == "__main__":
    main()
