"""Summaries of a pipeline run as markdown, published as Prefect artifacts."""

from __future__ import annotations

from typing import Any


def run_markdown(result: dict[str, Any]) -> str:
    """The summary of one pipeline run as markdown (published as a Prefect artifact)."""
    m = result["metrics"]
    keys = list(m["test"])
    lines = [
        f"# {result['dataset']}: {m['model']}",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        "| **stfn** | " + " | ".join(f"{m['test'][k]:.4f}" for k in keys) + " |",
    ]
    for name, b in m.get("baselines", {}).items():
        lines.append(
            f"| {name} (baseline) | " + " | ".join(f"{b['test'].get(k, float('nan')):.4f}" for k in keys) + " |"
        )
    if m.get("versus_baselines"):
        lines += ["", f"**Against the baselines:** {m['versus_baselines']['text']}"]
    if result.get("settings"):
        lines += ["", "**Settings:** " + "; ".join(f"`{s}`" for s in result["settings"])]
    uri = result.get("tracking_uri", "")
    run_id = result["mlflow_run_id"]
    link = (
        f"[{run_id}]({uri.rstrip('/')}/#/experiments/{result['experiment_id']}/runs/{run_id})"
        if uri.startswith("http") and result.get("experiment_id")
        else f"`{run_id}` (`make ui`, experiment '{result['experiment']}')"
    )
    decision = "promoted to @champion" if result["promoted"] else "not promoted; @champion kept"
    lines += [
        "",
        f"**Decision:** {result['registered_model']} version {result['version']} {decision}: {result['reason']}",
        "",
        f"**MLflow run:** {link}  ",
        f"**Data:** md5 `{result['data_md5']}`; {result.get('dvc', '')}  ",
        f"**Training:** {result['epochs_run']} epochs, {result['train_seconds']:.0f} s on {m['n_train']} samples",
    ]
    return "\n".join(lines)


def validation_markdown(summary: dict[str, Any]) -> str:
    """The validation summary of one run as markdown (a Prefect artifact)."""
    return (
        f"# Validation of {summary['dataset']}\n\n"
        f"**{summary['expectations']} expectations passed** on {summary['n_samples']} samples "
        f"in {summary['seconds']} s (Great Expectations).\n\nFull report: `{summary['report']}` "
        "(and `.html`, logged to the MLflow run under `validation/`)."
    )
