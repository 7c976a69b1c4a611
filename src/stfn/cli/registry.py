"""Commands on the model registry: `stfn models` (versions, aliases, decisions), `stfn promote`
(by hand, recorded), `stfn rollback` (the previous champion back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stfn.cli import render
from stfn.cli.common import console, guard, project_root
from stfn.config import Paths, load_params


def models(
    dataset: Annotated[str | None, typer.Option(help="Only stfn-<dataset>.")] = None,
    gate: Annotated[
        str | None, typer.Option(help="Show the gate's checks of this version of stfn-<dataset> (params.yaml's).")
    ] = None,
) -> None:
    """List registered model versions with aliases, metric and promotion decision; with --gate,
    the gate report of one version (a row per check: challenger, champion, threshold, result).

    Example: stfn models --dataset moving-digits --gate 2
    """
    root = project_root()
    from stfn import registry, tracking

    tracking.configure(Paths(root).mlflow_dir)
    if gate is not None:
        _, name = _registered(dataset)
        checks = guard(registry.gate_report, name, gate)
        decision = next((r for r in guard(registry.list_versions, name) if r["version"] == str(gate)), None)
        if not checks:
            console.print(f"{name} v{gate}: no gate report (judged before the paired gate, or never judged)")
        else:
            render.print_gate(checks, f"{name} v{gate}: the gate's checks")
        if decision and decision["reason"]:
            console.print(f"{decision['decision']}: {decision['reason']}", highlight=False)
        return
    rows = guard(registry.list_versions, registry.model_name(dataset) if dataset else None)
    if not rows:
        console.print("no registered models yet (run `stfn run`)")
        return
    histories = {name: guard(registry.champion_history, name) for name in dict.fromkeys(r["name"] for r in rows)}
    render.print_models(rows, histories)


def promote(
    version: Annotated[str, typer.Argument(help="The model version to make @champion.")],
    dataset: Annotated[str | None, typer.Option(help="Which stfn-<dataset> (default: params.yaml's).")] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the alias history and on the version.")] = "manual",
) -> None:
    """Make a registered version the champion by hand (no gate); the move is recorded so that
    `stfn rollback` can undo it.

    Example: stfn promote 3 --dataset moving-digits --reason "approved after review"
    """
    registry, name = _registered(dataset)
    previous = guard(registry.promote, name, version, f"manual promotion: {reason}")
    if previous == version:
        console.print(f"{name} v{version} is already @champion")
    else:
        console.print(f"{name}: @champion -> v{version} (was {'v' + previous if previous else 'none'})")


def rollback(
    dataset: Annotated[str | None, typer.Option(help="Which stfn-<dataset> (default: params.yaml's).")] = None,
) -> None:
    """Put the previous champion back, from the alias history recorded on the registered model.

    Example: stfn rollback --dataset moving-digits
    """
    registry, name = _registered(dataset)
    before, after = guard(registry.rollback, name)
    console.print(f"{name}: @champion rolled back from v{before} to v{after}")


def _registered(dataset: str | None) -> tuple[Any, str]:
    """(the registry module, its store configured, and the registered model name for `dataset`)."""
    root = project_root()
    from stfn import registry, tracking

    if dataset is None:
        dataset = Path(guard(load_params, Paths(root).params_file).data.dataset).name
    tracking.configure(Paths(root).mlflow_dir)
    return registry, registry.model_name(dataset)
