"""Commands that use the champion: `stfn predict` (batch), `stfn serve` (HTTP, follows the
alias), `stfn monitor` (a new batch against the champion's reference statistics)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from stfn.cli.common import bars, console, guard, project_root
from stfn.config import Paths, load_params


def predict(
    dataset: Annotated[Path, typer.Option(help="A dataset folder in the contract (labels optional).")],
    out: Annotated[Path | None, typer.Option(help="Where to write the parquet (default reports/predictions/).")] = None,
    model: Annotated[str | None, typer.Option(help="Registered model (default stfn-<dataset name>).")] = None,
    alias: Annotated[str, typer.Option(help="Which version: an alias.")] = "champion",
    split: Annotated[str | None, typer.Option(help="Only this split (train, val, test).")] = None,
) -> None:
    """Batch prediction with the champion: checks the input against the model's contract,
    writes predictions.parquet (sample_id, prediction, probabilities or value, model version),
    logs the run to MLflow, and prints the metrics when the input has labels.

    Example: stfn predict --dataset data/raw/moving-digits --split test
    """
    root = project_root()
    from stfn import registry, tracking
    from stfn.data import contract
    from stfn.predict import batch_predict

    paths = Paths(root)
    spec = guard(contract.load_spec, dataset)
    name = model or registry.model_name(spec.name)
    target = out or paths.predictions_file(spec.name, split)
    tracking.configure(paths.mlflow_dir)
    with bars():
        result = guard(batch_predict, dataset, target, name, alias, split, f"{spec.name}-predictions", paths.mlflow_dir)
    console.print(f"{result['n']} predictions by {result['model']} (version {result['version']}) -> {target}")
    if result["metrics"]:
        console.print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
    console.print(f"MLflow run {result.get('mlflow_run_id')} (experiment '{spec.name}-predictions')")


def serve(
    dataset: Annotated[str | None, typer.Option(help="Serve stfn-<dataset> (default: params.yaml's).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default serve.host: loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port, 5001).")] = None,
    alias: Annotated[str | None, typer.Option(help="The alias followed (default serve.alias: champion).")] = None,
) -> None:
    """Serve the champion over HTTP with MLflow's scoring protocol (/ping, /health, /version,
    /invocations). Answers follow the alias: after `stfn promote` or `stfn rollback` they come from
    the new version within serve.follow_seconds (+ its load time), with no request failing.
    Every answer names its version (header X-STFN-Model-Version); every prediction is logged
    under .stfn/inference/<dataset>/ for `stfn monitor`.

    Example: stfn serve --port 5001, then
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d @serving_input_example.json
    """
    root = project_root()
    paths = Paths(root)
    params = guard(load_params, paths.params_file)
    from stfn import registry, tracking
    from stfn.endpoint import serve as run_endpoint

    name_of = paths.dataset_name(dataset or params.data.dataset)
    sp = params.serve
    host, port, alias = host or sp.host, port or sp.port, alias or sp.alias
    tracking.configure(paths.mlflow_dir)
    name = registry.model_name(name_of)

    def ready(endpoint) -> None:
        console.print(
            f"serving {name}@{alias} (version {endpoint.current.version}) at http://{host}:{port}/invocations;"
            f" follows @{alias} every {sp.follow_seconds:g} s; inference log {paths.inference_log(name_of)}",
            soft_wrap=True,
        )

    guard(
        run_endpoint,
        name,
        paths.inference_log(name_of),
        host,
        port,
        alias,
        sp,
        ready,
    )


def monitor(
    path: Annotated[Path, typer.Argument(help="A new batch: a dataset folder in the contract, or `stfn serve`'s log.")],
    model: Annotated[str | None, typer.Option(help="The dataset whose @champion serves it (default: params').")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Reference statistics for a champion registered without them.")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Inference log: only rows logged from this UTC time on.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a parameter: --set monitor.alpha=0.05")
    ] = None,
) -> None:
    """Compare a new batch with the champion's training data (reference statistics saved with the
    model): per series channel, per frame channel, the predicted classes or values and, when the
    batch has labels, the champion's metric. Writes reports/monitoring/<name>-<time>.json and .html
    and logs them to MLflow (experiment <name>-monitoring).

    Exit code 0: nothing crossed a threshold (params.yaml `monitor`).
    Exit code 3: drift or degradation (each named, with by how much and its threshold).
    Exit code 2: bad input (named; nothing written).

    Example: stfn monitor data/incoming/batch-0412 --model moving-digits
    """
    root = project_root()
    overrides = list(set_ or []) + ([f"data.dataset={model}"] if model else [])
    params = guard(load_params, Paths(root).params_file, overrides)
    from stfn.stages.monitor import monitor as run_monitor

    moment = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    with bars():
        report = guard(run_monitor, params, Paths(root), path, reference_file=reference, since=moment)
    verdict = "[bold red]ALARM[/]" if report["alarm"] else "[bold green]no threshold crossed[/]"
    console.print(
        f"{report['n']} samples from {path} ({report['kind']}) against {report['model']} "
        f"version {report['version']}: {verdict}"
    )
    for line in report["summary"]:
        console.print(f"  - {line}", highlight=False)
    console.print(f"report: {report['html']} (and .json); MLflow run {report.get('mlflow_run_id')}")
    if report["alarm"]:
        raise typer.Exit(3)
