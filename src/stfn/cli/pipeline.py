"""Commands that run the pipeline: `stfn run` (the Prefect flow), `stfn stage` (one stage, as
`dvc repro` runs it), `stfn ablate` (STFN against its single-modality baselines)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Annotated, Any

import typer

from stfn import progress
from stfn.cli import render
from stfn.cli.common import bars, console, fail, guard, project_root
from stfn.config import Paths, load_params

STAGES = ("prepare", "validate", "featurize", "train", "evaluate")


def run(
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset, a name under data/raw/, or a folder.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: --set train.epochs=3")] = None,
) -> None:
    """Run the whole pipeline as a Prefect flow and register the model in MLflow.

    model.spatial_encoder=patches is experimental: below the default cnn (docs: The model).

    Example: stfn run --set train.epochs=3
    """
    root = project_root()
    overrides = list(set_ or [])
    if dataset:
        overrides.append(f"data.dataset={dataset}")
    guard(load_params, Paths(root).params_file, overrides)  # a typo fails here, before Prefect starts
    starting = _start_temporary_api()
    from flows.training_pipeline import training_pipeline  # Prefect is imported before MLflow
    from stfn.efficiency import matmul_gflops

    if starting:
        starting.join()

    with bars():
        result = guard(training_pipeline, overrides=overrides, root=str(root))
    render.print_summary(result, root, _process_seconds(), matmul_gflops())


def _start_temporary_api() -> threading.Thread | None:
    """Without PREFECT_API_URL the flow runs on Prefect's temporary API, which takes 10-15 s to
    start here: start it now, beside the 5-7 s of importing the flow's modules (torch, MLflow,
    GX), instead of after. Prefect's server object is one per process, so the flow finds it
    running; should this start fail, the flow's own start tries again and reports."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    from prefect.server.api.server import SubprocessASGIServer

    def start() -> None:
        with contextlib.suppress(Exception):  # the flow's own start raises it, readably
            SubprocessASGIServer().start()

    thread = threading.Thread(target=start, name="prefect-api-start", daemon=True)
    thread.start()
    return thread


def _process_seconds() -> float:
    """Seconds since this process started (interpreter and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def stage(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}")]) -> None:
    """Run one pipeline stage without Prefect or MLflow (what `dvc repro` runs as
    `python -m stfn.stages.NAME`).

    Example: stfn stage featurize
    """
    root = project_root()
    if name not in STAGES:
        fail(ValueError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}"), 2)
    from stfn.stages.evaluate import evaluate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.train import train
    from stfn.stages.validate import validate

    params = guard(load_params, Paths(root).params_file)
    paths = Paths(root)
    fn = {
        "prepare": lambda: str(prepare(params, paths, force=True)),
        "validate": lambda: validate(params, paths),
        "featurize": lambda: str(featurize(params, paths)),
        "train": lambda: {k: v for k, v in train(params, paths).items() if k != "history"},
        "evaluate": lambda: evaluate(params, paths)["metrics"],
    }[name]
    with bars():
        out = guard(fn)
    console.print_json(json.dumps(out, default=str))


def ablate(
    seeds: Annotated[int, typer.Option(help="Seeds per model (>= 3 for error bars worth reading).")] = 3,
    variant: Annotated[list[str] | None, typer.Option(help="Models to train (default: all four).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name or folder.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: --set train.epochs=3")] = None,
) -> None:
    """Train STFN and the ablation baselines (time_only, space_only, late_concat) over several
    seeds on the same split; writes reports/ablation.json and a bar chart; logs nested MLflow runs.

    Example: stfn ablate --seeds 3
    """
    root = project_root()
    overrides = list(set_ or []) + ([f"data.dataset={dataset}"] if dataset else [])
    params = guard(load_params, Paths(root).params_file, overrides)
    from stfn.stages.ablate import ABLATION_VARIANTS, ablate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.validate import validate

    variants = tuple(variant or ABLATION_VARIANTS)
    unknown = set(variants) - set(ABLATION_VARIANTS)
    if unknown:
        fail(ValueError(f"unknown variant(s) {sorted(unknown)}; expected {', '.join(ABLATION_VARIANTS)}"), 2)
    paths = Paths(root)
    with bars():
        guard(prepare, params, paths)
        guard(validate, params, paths)
        guard(featurize, params, paths)

    def show(row: dict[str, Any]) -> None:
        extras = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "train_seconds")
        console.print(f"{row['variant']:<12} seed {row['seed']}: {extras} ({row['train_seconds']:.0f} s)")

    with bars():
        report = guard(ablate, params, paths, list(range(params.seed, params.seed + seeds)), variants, show)
    render.print_ablation(report, seeds)
    files = f"{paths.ablation_file.relative_to(root)}, {(paths.plots / 'ablation.png').relative_to(root)}"
    console.print(f"{files}; MLflow parent run {report['mlflow_run_id']}")


def tune(
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset, a name under data/raw/, or a folder.")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials to add to the study (default: tune.trials).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Minutes after which no new trial starts (default: tune.timeout_minutes).")
    ] = None,
    study: Annotated[str | None, typer.Option(help="The Optuna study to create or continue (default: dataset)")] = None,
    write: Annotated[bool, typer.Option(help="Write the best settings into params.yaml as datasets.<name>.")] = True,
    workers: Annotated[
        int, typer.Option(help="Run the trials as N flow runs of tune/trials on tune.work_pool (stfn deploy); 0: here.")
    ] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: --set tune.trials=5")] = None,
) -> None:
    """Search the settings of params.yaml's tune.space with Optuna, on the validation split only;
    each trial a child MLflow run (experiment <dataset>-tuning); the best settings written into
    params.yaml as the dataset's section. The study is stored in .stfn/tune/optuna.db, or
    $STFN_TUNE_STORAGE (a database URL: the team's PostgreSQL); the same --study continues it.

    Example: stfn tune --dataset irish-wind --trials 30
    """
    root = project_root()
    overrides = list(set_ or []) + ([f"data.dataset={dataset}"] if dataset else [])
    params = guard(load_params, Paths(root).params_file, overrides)
    from stfn import tuning
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import pinned, prepare
    from stfn.stages.tune import tune as run_tune
    from stfn.stages.validate import validate

    guard(tuning.check_space, params.tune.space, params)  # a bad space fails before any data is read
    paths = Paths(root)
    with bars():
        with pinned(params, paths):  # one version of the dataset read; the trials train on its features
            guard(prepare, params, paths)
            guard(validate, params, paths)
            guard(featurize, params, paths)

    def show(t: dict[str, Any]) -> None:
        value = f"{t['value']:.4g}" if t["value"] is not None else "-"
        console.print(f"trial {t['number']:>3}: {t['state'].lower():<8} val {value}")

    try:
        if workers > 0:
            n = trials or params.tune.trials
            summary = _on_workers(params, paths, study, n, workers, overrides, write, timeout)
        else:
            with bars():
                summary = guard(run_tune, params, paths, study, trials, timeout, write=write, on_trial=show)
    except KeyboardInterrupt:
        fail(RuntimeError("interrupted: the finished trials stay in the study; the same command continues it"), 130)
    render.print_tuning(summary, root)


def _on_workers(
    params, paths, study, trials: int, workers: int, overrides: list[str], write: bool, timeout: float | None
) -> dict[str, Any]:
    """`stfn tune --workers N`: the trials as flow runs of the tune/trials deployment."""
    import time as clock

    from flows.tuning import dispatch
    from stfn.ops.deploy import api_url
    from stfn.stages import tune as stage

    os.environ.setdefault("PREFECT_API_URL", guard(api_url, paths))  # a server, never the ephemeral API
    t0 = clock.perf_counter()
    with bars(), progress.bar(f"tuning on {workers} workers", trials) as update:

        def shown(done: int, total: int, states: list[str]) -> None:
            update(done, info=f"{done}/{total} trials finished; flow runs: {', '.join(s.lower() for s in states)}")

        out = guard(dispatch, params, paths, study, trials, workers, overrides, shown, timeout)
    import optuna

    url = stage.storage_url(paths)
    kept = optuna.load_study(study_name=out["study"], storage=url)
    summary = guard(stage.conclude, params, paths, kept, url, clock.perf_counter() - t0, write)
    summary["flow_runs"], summary["failed_runs"] = out["flow_runs"], out["failed_runs"]
    if out["storage"].startswith("a SQLite file"):
        console.print(f"[yellow]the study is in {out['storage']}[/]")
    if out["failed_runs"]:
        console.print(f"[yellow]flow runs that did not complete: {', '.join(out['failed_runs'])}[/]")
    return summary
