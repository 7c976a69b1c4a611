"""`stfn ingest PATH --append` (and the monitor flow, for a labelled batch that set off an alarm):
a batch in the contract added to a dataset under data/raw/, as a new DVC version the next
training trains on.

The batch is validated like any ingest (Great Expectations, params' `data.max_missing_ratio`),
must be in the dataset's contract (task, channels, steps, frames, classes: every difference named)
and must not reuse a sample_id. Its samples are split like the dataset's: when the dataset's
samples.parquet has a `split` column, the batch's own (if it has one) or a seeded split at
`data.val_fraction` / `data.test_fraction` (stratified by label), so the new data reaches the test
split the gate judges on too. The name is checked as a dataset name before anything is read.

Writers of one dataset, and the runs that read it, take turns under the dataset's lock
(`stfn.data.lock`, `.stfn/locks/<name>.lock`): an append holds it from reading the current
version to recording the new one, so two appends at once both land, one after the other, and a
run reads the version before an append or the one after it. An append lands whole or not at all:
the new version is written beside the dataset, swapped in (the previous folder kept aside), then
`dvc add` records it and `dvc push` sends it to the remote when one is configured. A failure at any
step (a `dvc push` refused) puts back the previous folder and `data/raw/<name>.dvc` before the
error is raised (a DvcError naming the command and saying the dataset is unchanged); a process
killed at any step leaves a journal, and the next writer or run of the dataset undoes the append
before it starts. Run the same append again: its ids are new again.

Test hook: `STFN_FAULT_APPEND=<step>` (written, swapped, dvc-add, dvc-push) makes the appending
process kill itself with SIGKILL once it has done that step, as a crash or `kill -9` would
(`tests/data/test_append_faults.py`). Nothing else reads it.

The built-in generated dataset (moving-digits) cannot take a batch: `prepare` regenerates it from
params.yaml, which would drop the batch; ingest a generated dataset under a name of its own.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd

from stfn.config import Params, Paths
from stfn.data import contract, lock
from stfn.data.contract import NAME_RE
from stfn.errors import DataValidationError, DvcError, Failure
from stfn.ops import versioning
from stfn.predict import check_contract
from stfn.stages.prepare import BUILTIN
from stfn.stages.validate import validate_folder

FAULT_ENV = "STFN_FAULT_APPEND"  # the test hook (module docstring)
FAULT_STEPS = ("written", "swapped", "dvc-add", "dvc-push")


def append(params: Params, paths: Paths, source, dataset: str | None = None) -> dict:
    """Append the batch folder `source` to dataset `dataset` (default: the batch's own name) under
    data/raw/; returns what was added and the DVC record. Raises DataValidationError (nothing
    changed) for a batch that fails validation or is not in the dataset's contract, DvcError
    (nothing changed either) when `dvc add` or `dvc push` fails."""
    spec = contract.load_spec(source)
    name = dataset or spec.name
    target = paths.raw / name
    if not NAME_RE.match(name):  # never a path: data/raw/<name> is the only place an append writes
        raise DataValidationError(
            str(name), [Failure("--append", None, "a dataset name under data/raw/ (a-z, 0-9 and '-')", repr(name))]
        )
    if name in BUILTIN:
        raise DataValidationError(
            name,
            [
                Failure(
                    str(target),
                    None,
                    "a dataset that can take a batch",
                    f"'{name}' is generated from params.yaml by `prepare`, which would drop it; ingest your "
                    "data under a name of its own (stfn ingest PATH) and monitor that",
                )
            ],
        )
    validate_folder(source, spec.name, params.data.max_missing_ratio, paths)  # the batch: nobody else writes it
    with lock.held(paths, name):  # the dataset itself is read under its lock only (it may be mid-swap)
        if not (target / contract.SPEC_FILE).is_file():
            raise DataValidationError(name, [Failure(str(target), None, "an ingested dataset to append to", "none")])
        check_contract(spec, contract.load_spec(target).model_dump(mode="json"), f"as dataset '{name}'")
        return _append(params, paths, source, spec, name, target)


def _append(params: Params, paths: Paths, source, spec: contract.DatasetSpec, name: str, target) -> dict:
    """The append itself, under the dataset's lock: read the current version, write the new one."""
    have = contract.load_spec(target)  # an append never changes it: checked above
    old = contract.read_parquet(target, contract.SAMPLES_FILE, name)
    new = contract.read_parquet(source, contract.SAMPLES_FILE, spec.name)
    clash = sorted(set(old["sample_id"].astype(str)) & set(new["sample_id"].astype(str)))
    if clash:
        raise DataValidationError(
            spec.name,
            [Failure(contract.SAMPLES_FILE, "sample_id", f"ids new to '{name}'", f"{len(clash)} reused", clash)],
        )
    how = "as given"
    if "split" in old.columns and "split" not in new.columns:
        d = params.data
        split, how = contract.assign_split(new, spec, d.val_fraction, d.test_fraction, params.seed)
        new = new.assign(split=split)
    elif "split" not in old.columns and "split" in new.columns:
        new = new.drop(columns="split")  # the dataset's splits are assigned at featurize time
        how = "at featurize time, with the rest"
    samples = pd.concat([old, new], ignore_index=True)
    series = pd.concat(
        [
            contract.read_parquet(target, contract.SERIES_FILE, name),
            contract.read_parquet(source, contract.SERIES_FILE, spec.name),
        ],
        ignore_index=True,
    )
    frames = np.concatenate(
        [contract.open_frames(target, have, len(old)), contract.open_frames(source, spec, len(new))]
    )
    journal = lock.Journal(paths, name)
    try:
        contract.write_dataset(journal.start(), have, samples, series, frames)
        _fault("written")
        journal.swap()
        _fault("swapped")
        record = _record(paths, target, journal)
    except BaseException as exc:
        step = journal.current
        lock.undo(paths, name)
        if isinstance(exc, DvcError):
            rel = target.relative_to(paths.root)
            raise DvcError(
                f"appending {len(new)} samples to '{name}' failed at {step}, and was undone: {rel} and {rel}.dvc "
                f"hold the previous version ({len(old)} samples); run the same command again once fixed.\n{exc}"
            ) from None
        raise
    journal.commit()
    counts = new["split"].value_counts().to_dict() if "split" in new.columns else {}
    return {"dataset": name, "added": len(new), "total": len(samples), "splits": counts, "split": how, "dvc": record}


def _record(paths: Paths, target, journal: lock.Journal) -> str:
    """`dvc add` the new version and `dvc push` it when a remote is configured (each step in the
    journal first); what was done, in words."""
    if not versioning.is_dvc_initialised(paths.root):
        return "not a DVC repo: the workspace holds the new version"
    rel = str(target.relative_to(paths.root))
    journal.step(f"`dvc add {rel}`")
    versioning.dvc(paths.root, "add", rel)
    _fault("dvc-add")
    record = f"`dvc add {rel}`: a new version in {rel}.dvc (commit it with git)"
    if versioning.has_remote(paths.root):
        journal.step(f"`dvc push {rel}.dvc`")
        versioning.dvc(paths.root, "push", f"{rel}.dvc")
        _fault("dvc-push")
        record += ", pushed to the DVC remote"
    return record


def _fault(step: str) -> None:
    """The test hook: SIGKILL this process once the append has done `step`, when asked to."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
