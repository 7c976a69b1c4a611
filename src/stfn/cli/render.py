"""What the commands print at the end: the run summary, the baselines beside the model, the
registered versions, the ablation; tables only, no work of their own."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from stfn.cli.common import console
from stfn.config import Paths


def split_line(r: dict[str, Any], seconds: float, matmul_gflops: float) -> str:
    """Where the run's time went: start-up (interpreter, imports, Prefect's API), each stage,
    and before it the install `make run` did (STFN_MAKE_START: when make started); beside it the
    machine's fp32 matmul rate, to read the seconds against."""
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
    return " · ".join(parts) + f"  (this machine's fp32 matmul: {matmul_gflops:.0f} GFLOP/s now)"


def print_summary(r: dict[str, Any], root: Path, seconds: float, matmul_gflops: float) -> None:
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
    table.add_row("time split", split_line(r, seconds, matmul_gflops))
    if r.get("base"):
        scores = ", ".join(f"{k} {v:.4g}" for k, v in r["base"]["val_mae"].items())
        table.add_row("starts from", f"the {r['base']['choice']} forecast (validation mae: {scores})")
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
    if r.get("gate"):
        print_gate(r["gate"], f"{r['registered_model']} v{r['version']}: the gate's checks")
    if m.get("baselines"):
        print_baselines(m)
    vs = m.get("versus_baselines")
    if vs:
        console.print(("[green]" if vs["stfn_wins"] else "[bold yellow]") + vs["text"] + "[/]", soft_wrap=True)
        if not vs["stfn_wins"] and r.get("best_epoch") == 0:
            console.print("no training epoch beat the linear start on validation: the model is the ridge forecast")
    if not uri.startswith("http"):
        console.print(f"Open the MLflow UI: [bold]make ui[/]  (then {link})", soft_wrap=True)


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:  # a count (parameters)
        return f"{int(v):,}"
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def print_gate(checks: list[dict[str, Any]], title: str) -> None:
    """The gate report: a row per check (the challenger's value, the champion's, the bar, the
    outcome, how it was measured)."""
    table = Table(title=title, title_justify="left")
    for col in ("check", "challenger", "champion", "threshold", "result", "detail"):
        table.add_column(col, overflow="fold")
    for c in checks:
        result = "[green]pass[/]" if c["passed"] else "[bold red]fail[/]"
        table.add_row(c["check"], _value(c["challenger"]), _value(c["champion"]), c["threshold"], result, c["detail"])
    console.print(table)


def print_baselines(m: dict[str, Any]) -> None:
    """The model's test metrics beside the reference forecasts' (regression)."""
    keys = list(m["test"])
    table = Table(title=f"{m['dataset']}: test metrics, STFN vs baselines (same test split)", title_justify="left")
    for col in ("model", *keys, "how"):
        table.add_column(col)
    table.add_row("[bold]stfn[/]", *(f"{m['test'][k]:.3f}" for k in keys), m["model"])
    for name, b in m["baselines"].items():
        table.add_row(name, *(f"{b['test'].get(k, float('nan')):.3f}" for k in keys), b["note"])
    console.print(table)


def print_models(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]]) -> None:
    """`stfn models`: a table per registered model (versions, aliases, metric, decision), each
    decision's reason, and the latest moves of @champion."""
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
        history = histories.get(name)
        if history:
            moves = ", ".join(f"{e['action']} v{e['version']} ({e['at']})" for e in history[-5:])
            console.print(f"  @champion history (latest 5): {moves}", highlight=False)


def print_ablation(report: dict[str, Any], seeds: int) -> None:
    """`stfn ablate`: each model's test metric over the seeds."""
    table = Table(title=f"Ablation on {report['dataset']}: test {report['metric']} over {seeds} seeds")
    for col in ("model", "mean", "std", "seeds"):
        table.add_column(col)
    for name, m in report["models"].items():
        table.add_row(name, f"{m['mean']:.4f}", f"{m['std']:.4f}", ", ".join(f"{v:.3f}" for v in m["seeds"]))
    console.print(table)


def print_tuning(summary: dict[str, Any], root: Path) -> None:
    """`stfn tune`: the study's counts, the best trial and where its settings went."""
    table = Table(title=f"Tuning {summary['dataset']}: study '{summary['study']}' (val {summary['metric']})")
    table.add_column("what")
    table.add_column("value")
    counts = (
        f"{summary['trials']} in the study: {summary['complete']} complete, {summary['pruned']} pruned "
        f"({summary['pruned_share']:.0%} of those finished), {summary['failed']} failed"
    )
    table.add_row("trials", counts)
    best = summary.get("best")
    if best:
        table.add_row("best", f"trial {best['number']}: val {summary['metric']} {best['value']:.4f}")
        table.add_row("settings", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in best["params"].items()))  # fmt: skip
    table.add_row("time", f"{summary['seconds']:.0f} s this call; study seed {summary['seed']}")
    table.add_row("storage", summary["storage"])
    table.add_row("MLflow", f"parent run {summary['mlflow_run_id']} (experiment {summary['dataset']}-tuning)")
    if summary.get("written"):
        w = summary["written"]
        where = Path(w["file"]).relative_to(root) if Path(w["file"]).is_relative_to(root) else w["file"]
        used = f"the next `stfn run --dataset {summary['dataset']}` uses it"
        table.add_row("written", f"{where}: {w['section']} ({used})")
    console.print(table)
