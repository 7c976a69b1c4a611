"""Stage `featurize`: normalisation fitted on the train split, memory-mappable float32 arrays in
data/features/<name>/. Skipped when the dataset and the split parameters are unchanged since the
last run (its inputs are stamped beside the features). DVC: `python -m stfn.stages.featurize`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stfn import defaults, progress
from stfn.config import Params, Paths
from stfn.data import lock
from stfn.features import build_features
from stfn.fileio import dir_md5, write_json
from stfn.runtime import stage_context

log = logging.getLogger(__name__)


def featurize(params: Params, paths: Paths, data_md5: str | None = None) -> Path:
    """Build the features (or keep them when up to date). `data_md5`: the dataset's hash when the
    caller has it already (validation computes it), so it is not hashed twice. `auto` settings are
    resolved for the dataset's task (stfn.defaults). The dataset is read under its lock
    (stfn.data.lock): one version, never half an append."""
    with lock.reading(paths, paths.dataset_dir(params.data.dataset)):
        return _featurize(params, paths, data_md5)


def _featurize(params: Params, paths: Paths, data_md5: str | None) -> Path:
    params, _ = defaults.for_dataset(params, paths)
    folder = paths.dataset_dir(params.data.dataset)
    out = paths.features_dir(folder.name)
    inputs = {
        "data_md5": data_md5 or dir_md5(folder),
        "val_fraction": params.data.val_fraction,
        "test_fraction": params.data.test_fraction,
        "series_norm": params.data.series_norm,
        "seed": params.seed,
    }
    stamp = paths.features_stamp(folder.name)
    if stamp.is_file() and json.loads(stamp.read_text()) == inputs:
        log.info("features for %s are up to date", folder.name)
        return out
    with progress.bar("featurizing") as update:
        build_features(
            folder,
            out,
            params.data.val_fraction,
            params.data.test_fraction,
            params.seed,
            lambda done, total: update(done, total, info=f"{folder.name}: samples"),
            params.data.series_norm,
        )
    write_json(stamp, inputs)
    return out


def main() -> None:
    params, paths = stage_context()
    print(featurize(params, paths))


if __name__ == "__main__":
    main()
