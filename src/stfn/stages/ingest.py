"""`stfn ingest PATH --append` (and the monitor flow, for a labelled batch that set off an alarm):
a batch in the contract added to a dataset under data/raw/, as a new DVC version the next
training trains on.

The batch is validated like any ingest (Great Expectations, params' `data.max_missing_ratio`),
must be in the dataset's contract (task, channels, steps, frames, classes: every difference named)
and must not reuse a sample_id. Its samples are split like the dataset's: when the dataset's
samples.parquet has a `split` column, the batch's own (if it has one) or a seeded split at
`data.val_fraction` / `data.test_fraction` (stratified by label), so the new data reaches the test
split the gate judges on too. The dataset is rewritten whole (atomically: a reader sees the old
version or the new one), then `dvc add` records the version and `dvc push` sends it to the remote
when one is configured. Writers of one dataset take turns: an append holds the dataset's lock
(filelock, `.stfn/locks/<name>.lock`) from reading the old version to recording the new one, so
two appends at once both land, one after the other. The name is checked as a dataset name before
anything is read or written.

The built-in generated dataset (moving-digits) cannot take a batch: `prepare` regenerates it from
params.yaml, which would drop the batch; ingest a generated dataset under a name of its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from stfn.config import Params, Paths
from stfn.data import contract
from stfn.data.contract import NAME_RE
from stfn.errors import DataValidationError, Failure
from stfn.ops import versioning
from stfn.predict import check_contract
from stfn.stages.prepare import BUILTIN
from stfn.stages.validate import validate_folder


def append(params: Params, paths: Paths, source, dataset: str | None = None) -> dict:
    """Append the batch folder `source` to dataset `dataset` (default: the batch's own name) under
    data/raw/; returns what was added and the DVC record. Raises DataValidationError (nothing
    changed) for a batch that fails validation or is not in the dataset's contract."""
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
    if not (target / contract.SPEC_FILE).is_file():
        raise DataValidationError(name, [Failure(str(target), None, "an ingested dataset to append to", "none")])
    check_contract(spec, contract.load_spec(target).model_dump(mode="json"), f"as dataset '{name}'")
    validate_folder(source, spec.name, params.data.max_missing_ratio, paths)
    lock = FileLock(paths.state / "locks" / f"{name}.lock")
    (paths.state / "locks").mkdir(parents=True, exist_ok=True)
    try:
        with lock.acquire(timeout=LOCK_SECONDS):
            return _append(params, paths, source, spec, name, target)
    except Timeout:
        raise DataValidationError(
            name, [Failure(str(target), None, f"the dataset's lock within {LOCK_SECONDS} s", "another writer holds it")]
        ) from None


LOCK_SECONDS = 600  # another append of the same dataset: rewriting and `dvc push` take seconds to minutes


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
    contract.write_dataset(target, have, samples, series, frames)
    record = "not a DVC repo: the workspace holds the new version"
    if versioning.is_dvc_initialised(paths.root):
        rel = str(target.relative_to(paths.root))
        versioning.dvc(paths.root, "add", rel)
        record = f"`dvc add {rel}`: a new version in {rel}.dvc (commit it with git)"
        if versioning.has_remote(paths.root):
            versioning.dvc(paths.root, "push", f"{rel}.dvc")
            record += ", pushed to the DVC remote"
    counts = new["split"].value_counts().to_dict() if "split" in new.columns else {}
    return {"dataset": name, "added": len(new), "total": len(samples), "splits": counts, "split": how, "dvc": record}
