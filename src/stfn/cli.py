"""The `stfn` command: parse, call a stage or an op, print. Errors are one readable paragraph
(exit 2 for bad input, 1 otherwise); `--debug` shows the traceback.

Each command imports the stages, registry or ops it calls inside its body, on purpose: they pull
torch, MLflow, Prefect and Great Expectations (3-5 s together), which `stfn --help`, `stfn servers
stop` or `stfn models` must not pay for. Every other module imports ours at its top."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stfn import progress
from stfn.config import Paths, find_project_root, load_params
from stfn.errors import ConfigError, DataValidationError, DvcError, TrackingError
from stfn.runtime import configure_environment, quiet_logs

app = typer.Typer(
    help="STFN pipeline: validate -> featurize -> train -> evaluate -> register spatio-temporal fusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, force_terminal=True if progress.forced() else None)
STATE: dict[str, Any] = {"debug": False}
STAGES = ("prepare", "validate", "featurize", "train", "evaluate")


def _root() -> Path:
    root = find_project_root()
    configure_environment(root)
    return root


def _fail(exc: BaseException, code: int) -> None:
    if STATE["debug"]:
        raise exc
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    err_console.print("[dim](run with --debug for the traceback)[/]")
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Call `fn`, turning known error families into a readable message and an exit code."""
    try:
        return fn(*args, **kwargs)
    except (DataValidationError, ConfigError) as exc:
        _fail(exc, 2)
    except (TrackingError, DvcError, FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(exc, 1)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False) -> None:
    STATE["debug"] = debug
    root = logging.getLogger()
    if not any(isinstance(h, progress.ConsoleLogHandler) for h in root.handlers):
        # through the console that draws the progress bars: log lines scroll above them
        root.addHandler(
            progress.ConsoleLogHandler(err_console, "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root.setLevel(logging.INFO)
    quiet_logs(debug)


def _bars():
    """Progress bars on stderr while a command works (on a terminal, or STFN_PROGRESS=always)."""
    return progress.display(err_console, progress.wanted(err_console))


@app.command()
def run(
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset, a name under data/raw/, or a folder.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: --set train.epochs=3")] = None,
) -> None:
    """Run the whole pipeline as a Prefect flow and register the model in MLflow.

    model.spatial_encoder=patches is experimental: below the default cnn (README, "Spacetime patches").

    Example: stfn run --set train.epochs=3
    """
    root = _root()
    overrides = list(set_ or [])
    if dataset:
        overrides.append(f"data.dataset={dataset}")
    _guard(load_params, Paths(root).params_file, overrides)  # a typo fails here, before Prefect starts
    starting = _start_temporary_api()
    from flows.training_pipeline import training_pipeline  # Prefect is imported before MLflow

    if starting:
        starting.join()

    with _bars():
        result = _guard(training_pipeline, overrides=overrides, root=str(root))
    _print_summary(result, root, _process_seconds())


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


def _split_line(r: dict[str, Any], seconds: float) -> str:
    """Where the run's time went: start-up (interpreter, imports, Prefect's API), each stage,
    and before it the install `make run` did (STFN_MAKE_START: when make started)."""
    from stfn.efficiency import matmul_gflops

    split = dict(r.get("split_seconds") or {})
    parts = []
    if os.environ.get("STFN_MAKE_START"):
        # the process start time is known to ~1 s: below that, make found the venv up to date
        install = time.time() - seconds - float(os.environ["STFN_MAKE_START"])
        parts.append(
            f"install {install:.0f} s (make, before stfn started)"
            if install >= 1
            else "install: none (venv up to date)"
        )
    parts.append(f"start-up {max(0.0, seconds - sum(split.values())):.0f} s")
    parts += [f"{k} {v:.0f} s" for k, v in split.items()]
    return " · ".join(parts) + f"  (this machine's fp32 matmul: {matmul_gflops():.0f} GFLOP/s now)"


def _print_summary(r: dict[str, Any], root: Path, seconds: float) -> None:
    """The end of `stfn run`: what was trained on, how it scored against the champion, what was
    decided, and where to look (MLflow run, Prefect flow run)."""
    m = r["metrics"]
    metric, ui_port = m["primary_metric"], 5000
    table = Table(title=f"STFN pipeline finished in {seconds:.0f} s", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("dataset", f"{r['dataset']} ({r['dataset_folder']})")
    table.add_row("data version", f"md5 {r['data_md5']}; DVC: {r.get('dvc', '')}")
    table.add_row("test metrics", ", ".join(f"{k}={v:.4f}" for k, v in m["test"].items()))
    table.add_row("val metrics", ", ".join(f"{k}={v:.4f}" for k, v in m["val"].items()))
    table.add_row("training", f"{r['epochs_run']} epochs, {r['train_seconds']:.0f} s, {m['n_train']} train samples")
    table.add_row("time split", _split_line(r, seconds))
    for i, line in enumerate(r.get("settings", [])):
        table.add_row("settings" if i == 0 else "", line)
    if r.get("champion_before") and r.get("champion_value_before") is not None:
        before = f"{r['champion_value_before']:.4f} of champion v{r['champion_before']}"
        vs = f"test {metric} {m['test'][metric]:.4f} vs {before}"
    else:
        vs = f"test {metric} {m['test'][metric]:.4f}; no champion before this run"
    table.add_row("vs champion", vs)
    table.add_row("registered", f"{r['registered_model']} version {r['version']} @challenger")
    verdict = "[green]PROMOTED[/] to @champion" if r["promoted"] else "[yellow]kept the champion[/]"
    table.add_row("decision", f"{verdict}: {r['reason']}")
    uri, run_id, exp = r["tracking_uri"], r["mlflow_run_id"], r.get("experiment_id")
    base = uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{ui_port}"
    link = f"{base}/#/experiments/{exp}/runs/{run_id}" if exp else run_id
    table.add_row("MLflow run", link + ("" if uri.startswith("http") else "  (after `make ui`)"))
    table.add_row("MLflow store", uri)
    prefect = r.get("prefect_ui")
    flow_run = r["flow_run_id"]
    if prefect:
        table.add_row("Prefect flow run", f"{prefect}/runs/flow-run/{flow_run}")
    else:
        table.add_row("Prefect flow run", f"{flow_run}  (ephemeral API, not kept: `make servers` for a Prefect UI)")
    table.add_row("metrics file", str(Paths(root).metrics_file))
    console.print(table)
    if m.get("baselines"):
        _print_baselines(m)
    vs = m.get("versus_baselines")
    if vs:
        console.print(("[green]" if vs["stfn_wins"] else "[bold yellow]") + vs["text"] + "[/]", soft_wrap=True)
        if not vs["stfn_wins"] and r.get("best_epoch") == 0:
            console.print("no training epoch beat the linear start on validation: the model is the ridge forecast")
    if not uri.startswith("http"):
        console.print(f"Open the MLflow UI: [bold]make ui[/]  (then {link})", soft_wrap=True)


def _print_baselines(m: dict[str, Any]) -> None:
    """The model's test metrics beside the reference forecasts' (regression)."""
    keys = list(m["test"])
    table = Table(title=f"{m['dataset']}: test metrics, STFN vs baselines (same test split)", title_justify="left")
    for col in ("model", *keys, "how"):
        table.add_column(col)
    table.add_row("[bold]stfn[/]", *(f"{m['test'][k]:.3f}" for k in keys), m["model"])
    for name, b in m["baselines"].items():
        table.add_row(name, *(f"{b['test'].get(k, float('nan')):.3f}" for k in keys), b["note"])
    console.print(table)


def _track(root: Path, folder: Path, msg: str) -> None:
    """`dvc add` a dataset folder under data/raw/ (in a DVC repo), then say what to run next."""
    from stfn.ops import versioning

    if versioning.is_dvc_initialised(root):
        _guard(versioning.dvc, root, "add", str(folder.relative_to(root)))
        msg += f"; tracked by DVC ({folder.relative_to(root)}.dvc: commit it with git)"
    console.print(msg)
    console.print(f"next: stfn run --dataset {folder.name}")


@app.command(name="import")
def import_(
    name: Annotated[str, typer.Argument(help="Which recording: irish-wind | german-pm10.")],
    source: Annotated[
        Path | None,
        typer.Option(help="The file or folder to read (e.g. wind.rda or a r-cran-gstat .deb); default: fetch it."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Import a real recording that ships inside a package as a dataset in the contract,
    validate it (params.yaml, its `datasets.<name>` section, --set), and track it with DVC.

    irish-wind: daily wind at 12 Irish stations 1961-1978 (gstat's wind.rda; fetched with
    `apt-get download r-cran-gstat` on Debian/Ubuntu, or give --source).

    german-pm10: daily PM10 at 31 German rural stations 2002-2009, with their real gaps
    (spacetime's air.rda; `apt-get download r-cran-spacetime`, or give --source).

    Example: stfn import irish-wind && stfn run --dataset irish-wind
    """
    root = _root()
    params = _guard(load_params, Paths(root).params_file, [f"data.dataset={name}", *(set_ or [])])
    from stfn.data import importers
    from stfn.stages.validate import validate_folder

    if name not in importers.IMPORTERS:
        _fail(ValueError(f"unknown recording '{name}'; available: {', '.join(importers.IMPORTERS)}"), 2)
    paths = Paths(root)
    target = paths.raw / name
    if target.exists() and not force:
        _fail(FileExistsError(f"{target} already exists (use --force to replace it)"), 2)
    staged = paths.state / "imports" / name  # built and validated here; data/raw/ gets it only when valid
    shutil.rmtree(staged, ignore_errors=True)
    try:
        importers.IMPORTERS[name](staged, paths.state / "cache" / name, source)
    except importers.ImportError_ as exc:
        _fail(exc, 2)
    with _bars():
        s = _guard(validate_folder, staged, name, params.data.max_missing_ratio, paths)
    from stfn.fileio import atomic_dir

    with atomic_dir(target) as tmp:
        for f in staged.iterdir():
            shutil.move(f, tmp / f.name)
    shutil.rmtree(staged, ignore_errors=True)
    _track(
        root,
        target,
        f"[green]imported[/] {name} -> {target}: {s['n_samples']} samples, {s['expectations']} expectations passed",
    )


def _dataset_params(root: Path, folder: Path, sets: list[str] | None):
    """params.yaml for the dataset in `folder`: its own `datasets.<name>` section applied (the name
    in its dataset.yaml, else the folder's), then the command line's --set."""
    import yaml

    try:
        name = str(yaml.safe_load((folder / "dataset.yaml").read_text()).get("name") or folder.resolve().name)
    except (OSError, yaml.YAMLError, AttributeError):  # validation reports a broken dataset.yaml itself
        name = folder.resolve().name
    return _guard(load_params, Paths(root).params_file, [f"data.dataset={name}", *(sets or [])])


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A dataset folder in the contract.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Validate a dataset folder against its dataset.yaml (Great Expectations), with the settings
    of params.yaml, its `datasets.<name>` section for this dataset, and --set.

    Example: stfn validate data/raw/moving-digits
    """
    root = _root()
    params = _dataset_params(root, path, set_)
    from stfn.stages.validate import validate_folder

    with _bars():
        s = _guard(validate_folder, path, path.resolve().name, params.data.max_missing_ratio, Paths(root))
    console.print(
        f"[green]ok[/] {s['dataset']}: {s['expectations']} expectations passed on {s['n_samples']} samples "
        f"in {s['seconds']} s; report: {s['report']} (+ .html)"
    )
    for hint in s.get("hints", []):
        console.print(f"[yellow]hint:[/] {hint}", soft_wrap=True)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A dataset folder in the contract.")],
    force: Annotated[bool, typer.Option(help="Replace an existing dataset of the same name.")] = False,
    append: Annotated[
        str | None, typer.Option(help="Add the batch to this ingested dataset (a new DVC version) instead.")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: --set data.max_missing_ratio=0.25")] = None,
) -> None:
    """Validate a dataset folder (params.yaml, its `datasets.<name>` section, --set), copy it to
    data/raw/<name>/ and track it with DVC. With --append NAME: validate it as a batch of dataset
    NAME (same contract, new sample ids), add its samples (split like NAME's) and record the new
    version with DVC.

    Example: stfn ingest ~/my-dataset --set data.max_missing_ratio=0.25 && stfn run --dataset my-dataset
    """
    root = _root()
    params = _dataset_params(root, path, set_)
    from stfn.data import contract
    from stfn.fileio import atomic_dir
    from stfn.stages.validate import validate_folder

    paths = Paths(root)
    if append:
        from stfn.stages.ingest import append as append_batch

        with _bars():
            out = _guard(append_batch, params, paths, path, append)
        console.print(
            f"[green]appended[/] {out['added']} samples to {out['dataset']} ({out['total']} now; split "
            f"{out['split']}: {out['splits']}); {out['dvc']}"
        )
        console.print(f"next: stfn run --dataset {out['dataset']}")
        return
    spec = _guard(contract.load_spec, path)
    with _bars():
        _guard(validate_folder, path, spec.name, params.data.max_missing_ratio, paths)
    target = paths.raw / spec.name
    if target.exists() and not force:
        _fail(FileExistsError(f"{target} already exists (use --force to replace it, --append to add to it)"), 2)
    with atomic_dir(target) as tmp:
        for f in contract.CONTRACT_FILES:
            shutil.copy2(path / f, tmp / f)
    _track(root, target, f"[green]ingested[/] {spec.name} -> {target}")


@app.command()
def models(dataset: Annotated[str | None, typer.Option(help="Only stfn-<dataset>.")] = None) -> None:
    """List registered model versions with aliases, metric and promotion decision.

    Example: stfn models --dataset moving-digits
    """
    root = _root()
    from stfn import registry, tracking

    tracking.configure(Paths(root).mlflow_dir)
    rows = _guard(registry.list_versions, registry.model_name(dataset) if dataset else None)
    if not rows:
        console.print("no registered models yet (run `stfn run`)")
        return
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        table = Table(title=name, title_justify="left")
        for col in ("version", "aliases", "test metric", "decision", "MLflow run"):
            table.add_column(col, overflow="fold")  # narrow terminals wrap the numbers, never cut them
        for r in mine:
            metric = f"{r['metric']}={float(r['value']):.4f}" if r["value"] else ""
            table.add_row(r["version"], ", ".join(r["aliases"]), metric, r["decision"] or "", r["run_id"] or "")
        console.print(table)
        for r in mine:
            if r["reason"]:
                console.print(f"  v{r['version']}: {r['reason']}", highlight=False)
        history = _guard(registry.champion_history, name)
        if history:
            moves = ", ".join(f"{e['action']} v{e['version']} ({e['at']})" for e in history[-5:])
            console.print(f"  @champion history (latest 5): {moves}", highlight=False)


def _registered(dataset: str | None) -> tuple[Any, str]:
    """(the registry module, its store configured, and the registered model name for `dataset`)."""
    root = _root()
    from stfn import registry, tracking

    if dataset is None:
        dataset = Path(_guard(load_params, Paths(root).params_file).data.dataset).name
    tracking.configure(Paths(root).mlflow_dir)
    return registry, registry.model_name(dataset)


@app.command()
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
    previous = _guard(registry.promote, name, version, f"manual promotion: {reason}")
    if previous == version:
        console.print(f"{name} v{version} is already @champion")
    else:
        console.print(f"{name}: @champion -> v{version} (was {'v' + previous if previous else 'none'})")


@app.command()
def rollback(
    dataset: Annotated[str | None, typer.Option(help="Which stfn-<dataset> (default: params.yaml's).")] = None,
) -> None:
    """Put the previous champion back, from the alias history recorded on the registered model.

    Example: stfn rollback --dataset moving-digits
    """
    registry, name = _registered(dataset)
    before, after = _guard(registry.rollback, name)
    console.print(f"{name}: @champion rolled back from v{before} to v{after}")


@app.command()
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
    root = _root()
    from stfn import registry, tracking
    from stfn.data import contract
    from stfn.predict import batch_predict

    paths = Paths(root)
    spec = _guard(contract.load_spec, dataset)
    name = model or registry.model_name(spec.name)
    target = out or paths.predictions_file(spec.name, split)
    tracking.configure(paths.mlflow_dir)
    with _bars():
        result = _guard(
            batch_predict, dataset, target, name, alias, split, f"{spec.name}-predictions", paths.mlflow_dir
        )
    console.print(f"{result['n']} predictions by {result['model']} (version {result['version']}) -> {target}")
    if result["metrics"]:
        console.print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
    console.print(f"MLflow run {result.get('mlflow_run_id')} (experiment '{spec.name}-predictions')")


@app.command()
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
    root = _root()
    overrides = list(set_ or []) + ([f"data.dataset={model}"] if model else [])
    params = _guard(load_params, Paths(root).params_file, overrides)
    from stfn.stages.monitor import monitor as run_monitor

    moment = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    with _bars():
        report = _guard(run_monitor, params, Paths(root), path, reference_file=reference, since=moment)
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


@app.command()
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
    root = _root()
    paths = Paths(root)
    params = _guard(load_params, paths.params_file)
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

    _guard(
        run_endpoint,
        name,
        paths.inference_log(name_of),
        host,
        port,
        alias,
        sp.follow_seconds,
        sp.max_request_mb,
        sp.log_flush_seconds,
        sp.log_keep_days,
        ready,
    )


@app.command()
def servers(
    action: Annotated[str, typer.Argument(help="start | stop | status")],
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
    mlflow_port: Annotated[int, typer.Option(help="MLflow tracking server port.")] = 5000,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    auth: Annotated[
        bool | None,
        typer.Option("--auth/--no-auth", help="MLflow's basic-auth app (default: STFN_MLFLOW_AUTH=1)."),
    ] = None,
) -> None:
    """Team mode: start / stop a Prefect server and an MLflow tracking server (PID files under
    .stfn/servers). MLflow uses PostgreSQL when STFN_DB_URL is set, Prefect when
    STFN_PREFECT_DB_URL is set; SQLite otherwise. With --auth every MLflow request needs a user
    (admin password from MLFLOW_AUTH_ADMIN_PASSWORD).

    Example: STFN_DB_URL=postgresql://postgres@127.0.0.1:5432/mlflow stfn servers start
    """
    root = _root()
    from stfn.ops import servers as srv

    paths = Paths(root)
    if action == "start":
        info = _guard(srv.start, paths, host, mlflow_port, prefect_port, auth=auth)
        for name, rec in info.items():
            extra = " (already running)" if rec.get("already_running") else ""
            extra += " with basic auth" if rec.get("auth") == "basic-auth" else ""
            console.print(f"{name}: {rec['url']} on {rec['backend']}, pid {rec['pid']}{extra}; log {rec['log']}")
        console.print(
            f"point the pipeline at them:\n  export MLFLOW_TRACKING_URI={info['mlflow']['url']} "
            f"PREFECT_API_URL={info['prefect']['url']}\nstop them: make servers-stop",
            soft_wrap=True,  # one line, whatever the terminal's width: it is copied and pasted
        )
    elif action == "stop":
        stopped = srv.stop(paths)
        console.print("stopped " + ", ".join(stopped) if stopped else "no servers recorded as started")
    elif action == "status":
        for name, rec in srv.status(paths).items():
            console.print(f"{name}: {rec['url']} {'running' if rec['running'] else 'NOT running'} (pid {rec['pid']})")
    else:
        _fail(ValueError(f"unknown action '{action}' (start | stop | status)"), 2)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
) -> None:
    """The MLflow UI against the project's tracking store (and the Prefect UI's address when a
    Prefect server is configured); Ctrl-C stops it and everything it started.

    Example: stfn ui --port 5001
    """
    root = _root()
    from stfn.ops import servers as srv

    def ready(urls: dict[str, str | None]) -> None:
        console.print(f"MLflow UI:  [bold]{urls['mlflow']}[/]")
        if urls.get("prefect"):
            console.print(f"Prefect UI: [bold]{urls['prefect']}[/]")
        else:
            console.print("Prefect UI: none configured (`make servers` starts a Prefect server with its UI)")
        if urls.get("started"):
            console.print("[dim]Ctrl-C stops the MLflow UI[/]")
        else:
            console.print("(the tracking server is the MLflow UI: nothing to start)")

    code = _guard(srv.ui, Paths(root), host, port, ready)
    raise typer.Exit(code)


@app.command()
def deploy(
    worker: Annotated[bool, typer.Option(help="Also start a process worker for the retrain pool.")] = True,
) -> None:
    """Scheduled retraining and monitoring: create the work pool(s), deploy prefect.yaml's
    `retrain-scheduled` (cron and timezone from params.yaml `retrain`), `watch` (the monitor flow,
    cron from `monitor`; `training-pipeline/train` too when `train.work_pool` is set) to the Prefect
    server, and start a process worker. Needs a server: `make servers`.

    Example: make servers && stfn deploy
    """
    root = _root()
    params = _guard(load_params, Paths(root).params_file)
    from stfn.ops.deploy import deploy as do_deploy
    from stfn.ops.servers import ui_of_api

    out = _guard(do_deploy, params, Paths(root), worker)
    console.print(f"deployed {', '.join(out['deployments'])} to {out['api_url']} (pools {', '.join(out['pools'])})")
    console.print(f"schedule: {out['schedule']}; at most one retrain at a time (CANCEL_NEW)")
    console.print(f"monitor/watch: {out['monitor_schedule']}, the inference log; a batch: -p path=FOLDER")
    if "worker" in out:
        console.print(f"worker for {out['pools'][0]}: pid {out['worker']['pid']}, log {out['worker']['log']}")
        console.print(f"scheduled runs log to MLflow at {out['tracking_uri']}", soft_wrap=True)
    console.print(
        f"run one now: PREFECT_API_URL={out['api_url']} .venv/bin/prefect deployment run retrain/retrain-scheduled\n"
        f"watch it:    {ui_of_api(out['api_url'])}/deployments (the Prefect UI)\n"
        "stop all:    make servers-stop",
        soft_wrap=True,
    )


@app.command()
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
    root = _root()
    overrides = list(set_ or []) + ([f"data.dataset={dataset}"] if dataset else [])
    params = _guard(load_params, Paths(root).params_file, overrides)
    from stfn.stages.ablate import ABLATION_VARIANTS, ablate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.validate import validate

    variants = tuple(variant or ABLATION_VARIANTS)
    unknown = set(variants) - set(ABLATION_VARIANTS)
    if unknown:
        _fail(ValueError(f"unknown variant(s) {sorted(unknown)}; expected {', '.join(ABLATION_VARIANTS)}"), 2)
    paths = Paths(root)
    with _bars():
        _guard(prepare, params, paths)
        _guard(validate, params, paths)
        _guard(featurize, params, paths)

    def show(row: dict[str, Any]) -> None:
        extras = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "train_seconds")
        console.print(f"{row['variant']:<12} seed {row['seed']}: {extras} ({row['train_seconds']:.0f} s)")

    with _bars():
        report = _guard(ablate, params, paths, list(range(params.seed, params.seed + seeds)), variants, show)
    table = Table(title=f"Ablation on {report['dataset']}: test {report['metric']} over {seeds} seeds")
    for col in ("model", "mean", "std", "seeds"):
        table.add_column(col)
    for name, m in report["models"].items():
        table.add_row(name, f"{m['mean']:.4f}", f"{m['std']:.4f}", ", ".join(f"{v:.3f}" for v in m["seeds"]))
    console.print(table)
    files = f"{paths.ablation_file.relative_to(root)}, {(paths.plots / 'ablation.png').relative_to(root)}"
    console.print(f"{files}; MLflow parent run {report['mlflow_run_id']}")


@app.command()
def stage(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}")]) -> None:
    """Run one pipeline stage without Prefect or MLflow (what `dvc repro` runs as
    `python -m stfn.stages.NAME`).

    Example: stfn stage featurize
    """
    root = _root()
    if name not in STAGES:
        _fail(ValueError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}"), 2)
    from stfn.stages.evaluate import evaluate
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.train import train
    from stfn.stages.validate import validate

    params = _guard(load_params, Paths(root).params_file)
    paths = Paths(root)
    fn = {
        "prepare": lambda: str(prepare(params, paths, force=True)),
        "validate": lambda: validate(params, paths),
        "featurize": lambda: str(featurize(params, paths)),
        "train": lambda: {k: v for k, v in train(params, paths).items() if k != "history"},
        "evaluate": lambda: evaluate(params, paths)["metrics"],
    }[name]
    with _bars():
        out = _guard(fn)
    console.print_json(json.dumps(out, default=str))


def entrypoint() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
