"""DVC: data versions for the pipeline. Real `dvc` commands in the project's git repo.

When the project is a DVC repo (a fresh clone is), a built-in dataset is produced by
`dvc repro prepare` (DVC decides whether its code or parameters changed), recorded in
`dvc.lock` and pushed to the default remote; the data version is DVC's md5 of the folder.
Outside a DVC repo (a temp folder in tests, an installed package) these steps are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from stfn.errors import DvcError

log = logging.getLogger(__name__)


def is_dvc_initialised(root: Path) -> bool:
    """`dvc init` was run here: data can be tracked with `dvc add`."""
    return (Path(root) / ".dvc").is_dir()


def is_dvc_repo(root: Path) -> bool:
    """A DVC repo with the pipeline declared (`dvc.yaml`): stages can be reproduced."""
    return is_dvc_initialised(root) and (Path(root) / "dvc.yaml").is_file()


def dvc(root: Path, *args: str, timeout: float = 600) -> str:
    """Run `dvc ARGS` in `root` (the dvc of this Python environment) and return its output."""
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    # stage commands (`python -m stfn ...`) must find this environment's python first
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".strip())
    return proc.stdout


def has_remote(root: Path) -> bool:
    try:
        return bool(dvc(root, "remote", "list").strip())
    except DvcError:
        return False


def locked_md5(root: Path, stage: str, out: str) -> str | None:
    """The md5 DVC recorded in dvc.lock for `out` of `stage` (None when not recorded)."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for o in stages.get(stage, {}).get("outs", []):
        if o.get("path") == out:
            return o.get("md5")
    return None


def tracked_md5(dvc_file: Path) -> str | None:
    """The md5 a `.dvc` file (`dvc add`) records for its folder (None when it records none)."""
    try:
        outs = (yaml.safe_load(Path(dvc_file).read_text()) or {}).get("outs") or [{}]
    except (OSError, yaml.YAMLError):
        return None
    return outs[0].get("md5") if isinstance(outs[0], dict) else None


def changed(root: Path, stage: str) -> bool:
    """Does DVC see a change in STAGE's code, parameters, dependencies or outputs? (`dvc status
    --json STAGE`: an empty object means up to date.)"""
    return bool(json.loads(dvc(root, "status", "--json", stage).strip() or "{}"))


def reproduce(root: Path, stage: str, push: bool = True) -> dict[str, str | bool | None]:
    """`dvc repro STAGE` (runs only if its deps or params changed: asked first with `dvc status
    --json`), then `dvc push` to the default remote when one is configured."""
    ran = changed(root, stage)
    dvc(root, "repro", "--single-item", stage)
    pushed = False
    if push and has_remote(root):
        dvc(root, "push", stage)
        pushed = True
    what = f"`dvc repro {stage}` ran the stage" if ran else f"`dvc repro {stage}`: unchanged, skipped"
    return {"ran": ran, "pushed": pushed, "output": what}


def commit(root: Path, stages: list[str], push: bool = True) -> dict[str, bool]:
    """`dvc commit -f STAGES`: record outputs that the same stage functions produced outside
    `dvc repro` (the Prefect flow), so `dvc repro` has nothing left to do and `dvc push` can
    send them to the remote."""
    dvc(root, "commit", "--force", *stages)
    pushed = False
    if push and has_remote(root):
        dvc(root, "push", *stages)
        pushed = True
    return {"committed": True, "pushed": pushed}


def pull(root: Path, target: str) -> str:
    """`dvc pull TARGET` from the default remote: the newest recorded version of the data.
    A remote without the data is not an error here (the workspace data is used); returns what
    happened, in words."""
    if not has_remote(root):
        return "no DVC remote configured: using the workspace data"
    try:
        out = dvc(root, "pull", target)
    except DvcError as exc:
        log.warning("dvc pull %s failed, using the workspace data: %s", target, exc)
        return f"`dvc pull {target}` failed, using the workspace data"
    return f"`dvc pull {target}`: " + (out.strip().splitlines() or ["done"])[-1]
