"""The house rules of CONTRIBUTING.md's map, checked from the code: our own imports at the top of
each module (cli.py excepted, for its start-up), which layer may import which, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
FLOWS = SRC.parent / "flows"

# CONTRIBUTING.md's table: what each module may import of ours (stages and ops by folder)
BASE = {"errors", "fileio", "progress"}
DATA = BASE | {"config", "data"}
MODEL = DATA | {"models", "features", "baselines", "training", "evaluation", "plots", "efficiency"}
SERVE = MODEL | {"tracking", "registry", "predict"}
ALLOWED = {
    "errors": set(),
    "fileio": set(),
    "progress": set(),
    "config": {"errors"},
    "runtime": {"config", "errors"},
    "data": DATA,
    "validation": DATA,
    "features": DATA,
    "importers": DATA,
    "models": {"config"},
    "training": MODEL,
    "evaluation": MODEL,
    "plots": MODEL,
    "baselines": MODEL,
    "efficiency": MODEL,
    "tracking": {"errors", "config"},
    "registry": {"errors", "evaluation", "tracking"},
    "predict": SERVE,
    "serving": MODEL,
    "reports": set(),
    "ops": {"config", "errors", "tracking", "ops"},
    "stages": SERVE | {"runtime", "stages", "ops", "validation"},
    "cli": {"config", "errors", "progress", "runtime"},  # at its top; its commands import what they call
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


def test_our_imports_sit_at_the_top_of_each_module_but_the_cli():
    lazy = []
    for path in [*MODULES.values(), *FLOWS.glob("*.py")]:
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        lazy += [f"{path.name}:{n.lineno}" for n in ast.walk(tree) if ours(n) and id(n) not in top]
    assert {p.split(":")[0] for p in lazy} <= {"cli.py"}, lazy


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
