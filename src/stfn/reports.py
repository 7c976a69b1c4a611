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
    if result.get("base"):
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result["base"]["val_mae"].items())
        lines += ["", f"**Starts from:** the {result['base']['choice']} forecast (validation mae: {scores})"]
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


def monitoring_markdown(report: dict[str, Any]) -> str:
    """The verdict of one `stfn monitor` run as markdown (a Prefect artifact)."""
    verdict = "**ALARM**: " + ", ".join(report["crossed"]) if report["alarm"] else "no threshold crossed"
    lines = [
        f"# Monitoring {report['dataset']}: {verdict}",
        "",
        f"{report['n']} samples ({report['kind']}, {'labelled' if report['labelled'] else 'unlabelled'}) "
        f"from `{report['source']}` against {report['model']} version {report['version']} (@champion); "
        f"{report['n_tests']} statistical tests, each alarming at p < {report['p_threshold']:.2g}.",
        "",
        *(f"- {line}" for line in report["summary"]),
        "",
        f"Report: `{report['html']}`"
        + (f"; MLflow run `{report['mlflow_run_id']}`" if report.get("mlflow_run_id") else ""),
    ]
    return "\n".join(lines)


def monitoring_html(report: dict[str, Any], chart: Any) -> str:
    """The monitoring report as one self-contained HTML page (the chart embedded)."""
    import base64
    import html
    from pathlib import Path

    png = base64.b64encode(Path(chart).read_bytes()).decode()
    esc = html.escape
    rows = []
    for c in report["checks"]:
        p = "" if c["p_value"] is None else f"{c['p_value']:.2g} (&lt; {c['p_threshold']:.2g})"
        ref = "" if c["reference"] is None else f"{c['reference']:.4g}"
        got = "" if c["batch"] is None else f"{c['batch']:.4g}"
        style = ' style="background:#fde2e1"' if c["crossed"] else ""
        rows.append(
            f"<tr{style}><td>{esc(c['name'])}</td><td>{esc(c['kind'])}</td><td>{esc(c['test'])}</td>"
            f"<td>{c['statistic']:.4g}</td><td>{c['threshold']:g}</td><td>{p}</td><td>{ref}</td><td>{got}</td>"
            f"<td>{'yes' if c['crossed'] else ''}</td><td>{esc(c['detail'])}</td></tr>"
        )
    verdict = (
        f"<p class=alarm>ALARM: {esc(', '.join(report['crossed']))}</p>"
        if report["alarm"]
        else "<p class=ok>No threshold crossed.</p>"
    )
    summary = "".join(f"<li>{esc(s)}</li>" for s in report["summary"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Monitoring {esc(report["dataset"])} {esc(report["time"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}} .alarm{{color:#b00;font-weight:bold;font-size:1.2em}}
.ok{{color:#070;font-weight:bold;font-size:1.2em}}</style></head><body>
<h1>Monitoring {esc(report["dataset"])}</h1>
<p>{report["n"]} samples ({esc(report["kind"])}, {"labelled" if report["labelled"] else "unlabelled"}) from
<code>{esc(report["source"])}</code> against <b>{esc(report["model"])}</b> version {esc(report["version"])}
(@champion), {esc(report["time"])} UTC. {report["n_tests"]} statistical tests, each alarming when
p &lt; {report["p_threshold"]:.2g} (alpha {report["thresholds"]["alpha"]:g}, Bonferroni) and its effect reaches its
threshold.</p>
{verdict}<ul>{summary}</ul>
<img src="data:image/png;base64,{png}" alt="batch against reference" style="max-width:100%">
<h2>Every check</h2>
<table><tr><th>check</th><th>kind</th><th>test</th><th>statistic</th><th>threshold</th><th>p-value</th>
<th>reference</th><th>batch</th><th>crossed</th><th>what</th></tr>{"".join(rows)}</table>
</body></html>
"""
