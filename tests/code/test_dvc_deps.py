"""dvc.yaml: every stage depends on the code it runs, so `dvc repro` reruns a stage when that code
changes. The closure is derived here from the imports (ast), never written by hand twice."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
STAGES = ("prepare", "validate", "featurize", "train", "evaluate")


def module_file(name: str) -> Path | None:
    """The file of module `name` under src/ (a package's __init__.py), None when not ours."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def has_code(init: Path) -> bool:
    """A package __init__ counts as code when it holds more than its docstring."""
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def imports_of(path: Path) -> set[str]:
    """Our modules `path` imports (anywhere in the file: a lazy import runs too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from stfn import data` imports the module stfn.data; `from stfn.x import f` the module stfn.x
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "stfn" and module_file(name) is not None:
                found.add(name)
    return found


def closure(module: str) -> list[str]:
    """Every file of ours that importing `module` executes, relative to the repo, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += sorted(imports_of(module_file(name)))
    files = {module_file(n) for n in seen}
    return sorted(str(f.relative_to(REPO)) for f in files if f.name != "__init__.py" or has_code(f))


def code_deps(stage: dict) -> list[str]:
    return sorted(d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py"))


@pytest.mark.parametrize("stage", STAGES)
def test_each_dvc_stage_depends_on_the_code_it_runs(stage):
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    module = f"stfn.stages.{stage}"
    assert declared["cmd"] == f"python -m {module}"
    expected = closure(module)
    assert f"src/stfn/stages/{stage}.py" in expected
    listing = "\n".join(f"      - {f}" for f in expected)
    assert code_deps(declared) == expected, f"dvc.yaml deps of {stage} should be:\n{listing}"


STAND_IN = """
import hashlib, pathlib, sys
deps, outs = sys.argv[1].split(","), sys.argv[2].split(",")
h = hashlib.md5()
for d in deps:
    p = pathlib.Path(d)
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            h.update(f.read_bytes())
for o in outs:
    p = pathlib.Path(o)
    target = p / "out" if not p.suffix else p
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(h.hexdigest())
"""


def outs_of(stage: dict) -> list[str]:
    paths = []
    for group in ("outs", "metrics", "plots"):
        for item in stage.get(group, []):
            paths.append(item if isinstance(item, str) else next(iter(item)))
    return paths


@pytest.mark.slow
def test_changing_a_stage_module_reruns_it_and_the_stages_after_it(tmp_path):
    """dvc.yaml's graph (deps, params, outs) in a real DVC repo in a temp git repo, each stage's
    command replaced by a stand-in that writes its outputs as a hash of its dependencies (so an
    output changes exactly when what it was made from changes). After a full `dvc repro`, a
    change to featurize's module: `dvc repro --dry` plans to rerun featurize (a dry run cannot
    foresee the outputs of the stages after it), and the real `dvc repro` reruns featurize,
    then train and evaluate, whose inputs it changed; prepare and validate stay."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    work = tmp_path / "project"
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", work)
    (work / "stand_in.py").write_text(STAND_IN)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():
        deps = [d for d in stage["deps"] if isinstance(d, str)]
        stage["cmd"] = f"python stand_in.py {','.join(deps)} {','.join(outs_of(stage))}"
    (work / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    env = {"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "HOME": str(tmp_path),
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PATH": str(Path(sys.executable).parent)
           + ":/usr/bin:/bin"}  # fmt: skip

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def ran(output: str) -> set[str]:
        return {s for s in STAGES if f"Running stage '{s}'" in output}

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    assert ran(run(dvc, "repro")) == set(STAGES)
    assert "Data and pipelines are up to date" in run(dvc, "status")
    module = work / "src/stfn/stages/featurize.py"
    module.write_text(module.read_text() + "\n# a change to how featurize works\n")
    assert ran(run(dvc, "repro", "--dry")) == {"featurize"}
    assert ran(run(dvc, "repro")) == {"featurize", "train", "evaluate"}
