"""The validation report in words: each expectation's result as a row naming the file, the column
or sample, the expectation and a few offending values (and, where the expectation comes from
dataset.yaml, the key, its value and what the file holds), the report's JSON and HTML files.
`stfn.validation` runs the checks; this module only says what they found."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.data.contract import FRAMES_FILE, SAMPLES_FILE, SERIES_FILE, DatasetSpec
from stfn.errors import Failure
from stfn.fileio import write_json, write_text

FILE_OF = {
    "samples_types": SAMPLES_FILE,
    "series_types": SERIES_FILE,
    "samples": SAMPLES_FILE,
    "series": SERIES_FILE,
    "coverage": f"{SERIES_FILE} vs {SAMPLES_FILE}",
    "frames": FRAMES_FILE,
}
WHAT = {  # readable names of the coverage and frames checks
    ("coverage", "n_steps"): "every sample has exactly T steps",
    ("coverage", "in_samples"): "every series sample_id is in samples.parquet",
}


@dataclass
class ValidationReport:
    dataset: str
    success: bool
    n_samples: int
    results: list[dict]
    seconds: float

    @property
    def failures(self) -> list[Failure]:
        return [
            Failure(r["file"], r.get("column"), r["expectation"], r["detail"], r.get("examples", []))
            for r in self.results
            if not r["success"]
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "success": self.success,
            "n_samples": self.n_samples,
            "expectations": len(self.results),
            "failed": sum(not r["success"] for r in self.results),
            "seconds": round(self.seconds, 2),
        }


def problem(file: str, column: str | None, expectation: str, detail: str, examples: list | None = None) -> dict:
    return {
        "file": file,
        "column": column,
        "expectation": expectation,
        "detail": detail,
        "examples": examples or [],
        "success": False,
    }


def _declared(spec: DatasetSpec, table: str, column: str | None, kind: str) -> str | None:
    """The dataset.yaml key (and its value) an expectation comes from, if it comes from one."""
    T, n = spec.series.steps, spec.n_classes
    if table == "series" and column == "step" and "between" in kind:
        return f"series.steps: {T} (steps 0 to {T - 1})"
    if table == "coverage" and column == "n_steps":
        return f"series.steps: {T}"
    if table == "series" and column is None and "row_count" in kind:
        return f"series.steps: {T} (so {T} rows per sample)"
    if table == "series" and column in spec.channel_names:
        ch = spec.series.channels[spec.channel_names.index(column)]
        if "between" in kind:
            return f"series.channels '{column}': min {ch.min}, max {ch.max}"
        if "exist" in kind:
            return f"series.channels: {spec.channel_names}"
    if table == "samples" and column == "label" and "in_set" in kind and spec.task == "classification":
        return f"target.classes: {n} classes (labels 0 to {n - 1})"
    if table == "samples_types" and column == "label":
        return f"task: {spec.task}"
    if table == "frames" and column in ("frames", "channels", "height", "width", "dtype"):
        key = "count" if column == "frames" else column
        return f"frames.{key}: {getattr(spec.frames, key)}"
    return None


def _holds(table: str, df: pd.DataFrame | None, column: str | None, kind: str) -> str | None:
    """What the file holds where dataset.yaml and the file disagree (a range, the columns)."""
    if df is None or table.endswith("_types") or table in ("coverage", "frames"):
        return None
    if "exist" in kind:
        return f"the file holds the columns {list(df.columns)[:20]}"
    if column in df.columns and "between" in kind and pd.api.types.is_numeric_dtype(df[column]):
        values = df[column].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        if len(finite):
            return f"the file holds {column} from {finite.min():g} to {finite.max():g}"
    if column in df.columns and "in_set" in kind:
        seen = list(pd.unique(df[column].dropna()))
        try:
            seen = sorted(seen)
        except TypeError:  # mixed types: as found
            pass
        more = ", ..." if len(seen) > 12 else ""
        return f"the file holds {len(seen)} distinct values: {[_plain(v) for v in seen[:12]]}{more}"
    return None


def describe(table: str, r: Any, df: pd.DataFrame | None = None, spec: DatasetSpec | None = None) -> dict:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    column = kwargs.get("column") or (",".join(kwargs["column_list"]) if "column_list" in kwargs else None)
    shown = {k: v for k, v in kwargs.items() if k not in ("column", "column_list")}
    if "value_set" in shown and len(shown["value_set"]) > 12:
        shown["value_set"] = f"<{len(shown['value_set'])} values>"
    expectation = WHAT.get((table, column or "")) or (cfg.type + (f"({_kw(shown)})" if shown else ""))
    if table.endswith("_types"):
        expectation = f"column type is {' or '.join(kwargs['value_set'])}"
    result = r.result or {}
    info = r.exception_info or {}
    exc_msgs = []
    if isinstance(info, dict):
        if "exception_message" in info:
            exc_msgs = [info["exception_message"]] if info.get("raised_exception") else []
        else:
            exc_msgs = [
                v.get("exception_message") for v in info.values() if isinstance(v, dict) and v.get("raised_exception")
            ]
    examples: list = []
    if r.success:
        detail = "ok"
    elif exc_msgs:
        detail = str(exc_msgs[0])
    elif "unexpected_count" in result:
        n = result.get("unexpected_count", 0)
        pct = result.get("unexpected_percent")
        detail = f"{n} unexpected value{'s' * (n != 1)}" + (f" ({pct:.2f}%)" if pct is not None else "")
        if cfg.type == "expect_column_values_to_not_be_null" and pct is not None and "mostly" in kwargs:
            detail += _missing_hint(pct / 100.0, 1.0 - float(kwargs["mostly"]))
        idx = result.get("unexpected_index_list") or []
        if idx and isinstance(idx[0], dict):
            examples = [_plain({k: v for k, v in row.items()}) for row in idx[:5]]
        else:
            examples = [_plain(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
    elif "observed_value" in result:
        detail = f"observed {_plain(result['observed_value'])}"
    elif cfg.type == "expect_column_to_exist":
        detail = "column is missing"
    else:
        detail = "failed"
    if table.endswith("_types") and not r.success:
        detail = f"column type is {_plain(result.get('partial_unexpected_list', ['?'])[0])}"
    if not r.success and spec is not None:
        said = [_declared(spec, table, column, cfg.type), _holds(table, df, column, cfg.type)]
        if said[0]:
            said[0] = f"dataset.yaml says {said[0]}"
        detail += "".join(f"; {s}" for s in said if s)
    return {
        "file": FILE_OF[table],
        "table": table,
        "column": column,
        "expectation": expectation,
        "success": bool(r.success),
        "detail": detail,
        "examples": examples,
    }


def _missing_hint(found: float, allowed: float) -> str:
    """A refusal for missing readings names the setting that would accept them (not for a channel
    without a single reading: no setting makes that a sensor)."""
    if found >= 1.0:
        return " missing: the channel holds no reading at all; fix the file, or drop it from series.channels"
    enough = math.ceil(round(found * 20, 6)) / 20  # the next 0.05 at or above the share found
    return (
        f" missing, over data.max_missing_ratio = {allowed:.2f}: to accept it, --set data.max_missing_ratio="
        f"{enough:.2f} (stfn validate / ingest / run), or data: {{max_missing_ratio: {enough:.2f}}} in this "
        "dataset's datasets.<name> section of params.yaml (the model masks missing readings)"
    )


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in d.items() if v is not None)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def write_report(report: ValidationReport, json_path: Path) -> None:
    write_json(json_path, {**report.summary(), "results": report.results})
    rows = "\n".join(
        f"<tr class={'ok' if r['success'] else 'bad'}><td>{'✔' if r['success'] else '✘'}</td>"
        f"<td>{html.escape(str(r['file']))}</td><td>{html.escape(str(r.get('column') or ''))}</td>"
        f"<td>{html.escape(str(r['expectation']))}</td><td>{html.escape(str(r['detail']))}</td>"
        f"<td>{html.escape(str(r.get('examples') or ''))}</td></tr>"
        for r in sorted(report.results, key=lambda r: r["success"])
    )
    s = report.summary()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation: {report.dataset}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
tr.bad{{background:#fde2e2}}tr.ok td:first-child{{color:#1a7f37}}</style></head><body>
<h1>Data validation: {html.escape(report.dataset)}</h1>
<p><b>{"PASSED" if report.success else "FAILED"}</b> &mdash; {s["expectations"]} expectations, {s["failed"]} failed,
{s["n_samples"]} samples, {s["seconds"]} s (Great Expectations suites built from dataset.yaml)</p>
<table><tr><th></th><th>file</th><th>column</th><th>expectation</th><th>result</th><th>examples</th></tr>
{rows}</table></body></html>
"""
    write_text(json_path.with_suffix(".html"), page)
