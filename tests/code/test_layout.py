"""The house rules of CONTRIBUTING.md's map, checked from the code: our own imports at the top of
each module (the cli package excepted, for its start-up), which layer may import which, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
FLOWS = SRC.parent / "flows"

# CONTRIBUTING.md's table: what each module may import of ours (stages and ops by folder)
BASE = {"errors", "fileio", "progress"}
DATA = BASE | {"config", "data", "defaults"}
MODEL = DATA | {"models", "encoders", "patches", "covariates", "transforms", "inference", "features", "baselines"}
MODEL |= {"base_forecast", "training"}
MODEL |= {"evaluation", "plots", "efficiency", "gate"}
SERVE = MODEL | {"tracking", "registry", "predict"}
ALLOWED = {
    "errors": set(),
    "fileio": set(),
    "progress": set(),
    "config": {"errors"},
    "runtime": {"config", "errors"},
    "data": BASE | {"config", "data"},
    "defaults": {"config", "data"},
    "validation": DATA | {"validation_report"},
    "validation_report": DATA,
    "transforms": set(),
    "features": DATA | {"transforms"},
    "encoders": set(),
    "patches": {"encoders"},
    "covariates": {"transforms"},
    "models": {"config", "encoders", "patches", "covariates"},
    "inference": {"models", "transforms"},  # what a served model carries: see test_served_code
    "training": MODEL,
    "evaluation": MODEL,
    "plots": MODEL,
    "baselines": MODEL,
    "base_forecast": MODEL,
    "efficiency": MODEL,
    "monitoring": MODEL,
    "tracking": {"errors", "config"},
    "gate": {"evaluation"},  # the promotion rule: pure, the registry applies it
    "registry": {"errors", "gate", "tracking"},
    "tuning": {"config", "fileio"},  # the search space: checked, sampled, written back; the tune stage runs it
    "predict": SERVE,
    "model_pyfunc": {"inference"},
    "inference_log": {"fileio", "inference"},  # stfn serve's log of answers, read by stfn monitor
    "endpoint": SERVE | {"inference_log"},
    "reports": set(),
    "ops": {"config", "errors", "tracking", "ops"},
    "stages": SERVE
    | {"runtime", "stages", "ops", "validation", "monitoring", "reports", "endpoint", "inference_log"}
    | {"tuning"},
    "cli": {"cli", "config", "errors", "progress", "runtime"},  # at its top; its commands import what they call
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = modules()


def ours(node: ast.AST) -> list[str]:
    """The modules of ours an import statement names (`from stfn import data` -> stfn.data)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "stfn"]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stfn":
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
    return []


def top_level_imports(path: Path) -> set[str]:
    return {m for node in ast.parse(path.read_text()).body for m in ours(node)}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "stfn"


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("stfn", "stfn.__main__")])
def test_our_imports_respect_the_layers(module):
    allowed = ALLOWED[layer(module)]
    used = {layer(m) for m in top_level_imports(MODULES[module])}
    assert used <= allowed, f"{module} imports {sorted(used - allowed)}; the map allows {sorted(allowed)}"


def test_our_imports_sit_at_the_top_of_each_module_outside_the_cli():
    lazy = []
    for path in [*MODULES.values(), *FLOWS.glob("*.py")]:
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        lazy += [f"{path}:{n.lineno}" for n in ast.walk(tree) if ours(n) and id(n) not in top]
    assert all(Path(p.split(":")[0]).parent == SRC / "stfn" / "cli" for p in lazy), lazy


def test_no_import_cycle():
    graph = {m: {d for d in top_level_imports(p) if d in MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def closure(module: str) -> set[str]:
    """Every module of ours that importing `module` executes (parent packages included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [".".join(m.split(".")[:i]) for i in range(1, len(m.split(".")))]
        todo += [d for d in top_level_imports(MODULES[m]) if d in MODULES]
    return seen


def test_a_logged_model_carries_the_code_it_imports():
    """tracking.MODEL_CODE (copied into each model's folder as code/stfn/) is the import closure
    of stfn.model_pyfunc, the file MLflow runs to load the model: nothing missing, nothing extra."""
    from stfn.tracking import MODEL_CODE

    files = {MODULES[m].relative_to(SRC / "stfn").as_posix() for m in closure("stfn.model_pyfunc")}
    files -= {"model_pyfunc.py"}
    assert files == set(MODEL_CODE)


def test_every_package_our_code_imports_is_declared_in_pyproject():
    """`make run` installs the project without its dev extra: a package imported by src/ or flows/
    that only a dev tool or another package pulls in breaks it on a fresh clone (tenacity did).
    deptry reads the imports and pyproject.toml ([tool.deptry] says what is used without import)."""
    import shutil
    import subprocess
    import sys

    deptry = shutil.which("deptry", path=str(Path(sys.executable).parent))
    assert deptry, "deptry is missing: `make install-dev` installs it (the dev extra)"
    proc = subprocess.run(
        [deptry, "src", "flows", "--no-ansi"], cwd=SRC.parent, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_suites_conftest_loads_in_a_pytest_without_xdist():
    """benchmarks/gpu_check.sh runs tests/gpu with the GPU machine's bare pytest (no pytest-xdist):
    tests/conftest.py's xdist hook must be optional there, or pytest stops before collecting."""
    import subprocess
    import sys

    root = SRC.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "gpu",
         "--collect-only", "-q", "tests/gpu"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "INTERNALERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_no_module_is_too_big_to_read_at_once():
    """A module of one concern reads in one sitting: none of ours is over 500 lines."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    sizes |= {f"flows.{p.stem}": len(p.read_text().splitlines()) for p in FLOWS.glob("*.py")}
    sizes |= {f"soak.{p.stem}": len(p.read_text().splitlines()) for p in (SRC.parent / "soak").glob("*.py")}
    assert len(sizes) > 60 and not {m: n for m, n in sizes.items() if n > 500}
