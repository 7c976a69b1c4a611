"""After a flow run: `dvc commit` the validate..evaluate outputs it made (the same functions
`dvc repro` calls) and push them, so that `dvc repro` has nothing left to do. Only when the run
used `params.yaml` as it is (what `dvc.yaml`'s stages run with)."""

from __future__ import annotations

from stfn.config import Params, Paths, load_params
from stfn.ops import versioning

RECORDED_STAGES = ["validate", "featurize", "train", "evaluate"]


def record_versions(params: Params, paths: Paths) -> str:
    """Record the outputs in dvc.lock and push them; says what happened, in words."""
    if not versioning.is_dvc_repo(paths.root):
        return "skipped (not a DVC repo)"
    if params != load_params(paths.params_file):
        return "skipped (run parameters differ from params.yaml: outputs not recorded in dvc.lock)"
    result = versioning.commit(paths.root, RECORDED_STAGES)
    return "outputs recorded in dvc.lock" + (" and pushed to the DVC remote" if result["pushed"] else "")
