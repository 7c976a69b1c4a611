"""Validation of a dataset folder with Great Expectations 1.x (ephemeral context).

Suites are built from `dataset.yaml` for every table of the contract:
- `samples.parquet`: unique ids, labels in range, split values, row count matching frames.npy;
- `series.parquet`: columns present, steps in range, (sample_id, step) unique, values within the
  channels' physical bounds, missing ratio under `data.max_missing_ratio`, row count N*T;
- a per-sample coverage table: every sample has exactly T steps, no id in one file only;
- a per-sample frames statistics table: shape, min, max, NaN/inf count, dtype;
- a table of each contract column's type (sample_id and split text, step and class labels
  integers, timestamp a date-time, regression labels numbers), whether or not a run uses it.
A failure raises `DataValidationError` naming the file, the column or sample, the expectation
and a few offending values; where the expectation comes from dataset.yaml, the key and its value
too, and what the file holds. The full report is written as JSON and HTML.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.data.contract import (
    FRAMES_FILE,
    SAMPLES_FILE,
    SERIES_FILE,
    SPLITS,
    DatasetSpec,
    NpyRows,
    load_spec,
    read_npy_header,
    read_parquet,
)
from stfn.errors import DataValidationError
from stfn.validation_report import ValidationReport, describe, problem, write_report

__all__ = ["DataValidationError", "ValidationReport", "validate_dataset"]

log = logging.getLogger(__name__)
CHUNK = 1024  # samples per chunk when streaming frames statistics
ID_COLUMNS = ["sample_id", "step"]


def _frames_table(folder: Path, ids: pd.Series) -> tuple[pd.DataFrame | None, list[dict]]:
    """Per-sample statistics of frames.npy, streamed in chunks from a memory map."""
    path = folder / FRAMES_FILE
    try:
        shape, dtype, offset = read_npy_header(path)
    except Exception as exc:  # noqa: BLE001
        return None, [problem(FRAMES_FILE, None, "a readable .npy array", f"unreadable header ({exc})")]
    if dtype.hasobject:
        return None, [problem(FRAMES_FILE, None, "a numeric array", "holds Python objects (pickled); refused")]
    if len(shape) != 5:
        return None, [problem(FRAMES_FILE, None, "5 dimensions [N, F, C, H, W]", f"got shape {list(shape)}")]
    need = offset + int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        return None, [problem(FRAMES_FILE, None, "a complete file", f"truncated: {have} bytes, header promises {need}")]
    arr = NpyRows(path)  # streamed with file reads: memory stays one chunk whatever N
    n = shape[0]
    mins, maxs, bad = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    for i in range(0, n, CHUNK):
        block = np.asarray(arr[i : i + CHUNK]).reshape(min(CHUNK, n - i), -1)
        if block.size == 0:
            continue
        if np.issubdtype(dtype, np.floating):
            finite = np.isfinite(block)
            bad[i : i + CHUNK] = (~finite).sum(axis=1)
            block = np.where(finite, block, np.nan)
            with np.errstate(all="ignore"):
                mins[i : i + CHUNK] = np.nan_to_num(np.nanmin(block, axis=1), nan=0.0)
                maxs[i : i + CHUNK] = np.nan_to_num(np.nanmax(block, axis=1), nan=0.0)
        else:
            mins[i : i + CHUNK] = block.min(axis=1)
            maxs[i : i + CHUNK] = block.max(axis=1)
    sample_id = (
        ids.astype(str).to_numpy()[:n]
        if len(ids) >= n
        else np.array([*ids.astype(str), *(f"<row {k}>" for k in range(len(ids), n))])
    )
    table = pd.DataFrame(
        {
            "sample_id": sample_id,
            "frames": shape[1],
            "channels": shape[2],
            "height": shape[3],
            "width": shape[4],
            "dtype": str(dtype),
            "min": mins,
            "max": maxs,
            "nonfinite_count": bad,
        }
    )
    return table, []


def _suites(
    spec: DatasetSpec, samples: pd.DataFrame, series: pd.DataFrame, max_missing: float, batch: bool = False
) -> dict[str, list]:
    """The expectations for each table, built from the dataset's schema. `batch`: a batch for the
    monitor, which may come without labels and whose readings outside the channels' bounds are
    drift to report, not input to refuse (still finite)."""
    import great_expectations.expectations as gxe  # lazy: see _run_gx

    T, names = spec.series.steps, spec.channel_names
    s: list = [gxe.ExpectColumnToExist(column=c) for c in (("sample_id",) if batch else ("sample_id", "label"))]
    if "sample_id" in samples:
        s += [
            gxe.ExpectColumnValuesToNotBeNull(column="sample_id"),
            gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        ]
    if "label" in samples:
        s.append(gxe.ExpectColumnValuesToNotBeNull(column="label"))
        if spec.task == "classification":
            s.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(spec.n_classes))))
        else:
            s.append(
                gxe.ExpectColumnValuesToBeInTypeList(
                    column="label", type_list=["float64", "float32", "int64", "int32", "Float64", "Int64"]
                )
            )
    if "label" in samples and spec.task == "regression":  # finite: inf is no target
        s.append(gxe.ExpectColumnValuesToBeBetween(column="label", min_value=-FINITE, max_value=FINITE))
    if "split" in samples:
        s.append(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    if "timestamp" in samples:
        s.append(gxe.ExpectColumnValuesToNotBeNull(column="timestamp"))
    s.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))  # an empty dataset is an error

    r: list = [gxe.ExpectColumnToExist(column=c) for c in ("sample_id", "step", *names)]
    if "step" in series:
        r += [
            gxe.ExpectColumnValuesToNotBeNull(column="step"),
            gxe.ExpectColumnValuesToBeBetween(column="step", min_value=0, max_value=T - 1),
        ]
    if "step" in series and "sample_id" in series:
        r.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=["sample_id", "step"]))
    for ch in spec.series.channels:
        if ch.name not in series:
            continue
        r.append(
            gxe.ExpectColumnValuesToBeInTypeList(column=ch.name, type_list=["float64", "float32", "Float64", "Float32"])
        )
        r.append(gxe.ExpectColumnValuesToNotBeNull(column=ch.name, mostly=max(1e-9, 1.0 - max_missing)))
        if batch:  # finite: an infinite reading is no reading
            r.append(gxe.ExpectColumnValuesToBeBetween(column=ch.name, min_value=-FINITE, max_value=FINITE))
        elif ch.min is not None or ch.max is not None:
            r.append(gxe.ExpectColumnValuesToBeBetween(column=ch.name, min_value=ch.min, max_value=ch.max))
    r.append(gxe.ExpectTableRowCountToEqual(value=len(samples) * T))

    cov = [
        gxe.ExpectColumnValuesToBeBetween(column="n_steps", min_value=T, max_value=T),
        gxe.ExpectColumnValuesToBeInSet(column="in_samples", value_set=[True]),
    ]

    f = spec.frames
    lo, hi = (0, 255) if f.dtype == "uint8" else (None, None)
    fr = [
        gxe.ExpectColumnValuesToBeInSet(column="frames", value_set=[f.count]),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[f.channels]),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[f.height]),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[f.width]),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=[f.dtype]),
        gxe.ExpectColumnValuesToBeBetween(column="nonfinite_count", min_value=0, max_value=0),
        gxe.ExpectTableRowCountToEqual(value=len(samples)),  # one row of frames per row of samples.parquet
    ]
    if lo is not None:
        fr += [
            gxe.ExpectColumnValuesToBeBetween(column="min", min_value=lo, max_value=hi),
            gxe.ExpectColumnValuesToBeBetween(column="max", min_value=lo, max_value=hi),
        ]
    label_kinds = ["integer"] if spec.task == "classification" else ["float", "integer"]
    wanted = {"sample_id": ["string"], "label": label_kinds, "split": ["string"], "timestamp": ["datetime"]}
    st = [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=k) for c, k in wanted.items() if c in samples]
    rt = [gxe.ExpectColumnValuesToBeInSet(column=c, value_set=["string" if c == "sample_id" else "integer"])
          for c in ID_COLUMNS if c in series]  # fmt: skip
    return {"samples_types": st, "samples": s, "series_types": rt, "series": r, "coverage": cov, "frames": fr}


def column_kind(col: pd.Series) -> str:
    """A column's type in the contract's words: string, integer, float, datetime, bool, or what
    pandas infers for anything else (e.g. mixed)."""
    t = pd.api.types
    if t.is_bool_dtype(col):
        return "bool"
    if t.is_integer_dtype(col):
        return "integer"
    if t.is_float_dtype(col):
        return "float"
    if t.is_datetime64_any_dtype(col):
        return "datetime"
    inferred = t.infer_dtype(col, skipna=True)
    return "string" if inferred in ("string", "empty") else inferred


def _types_table(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [column_kind(df[c])] for c in columns if c in df.columns})


FINITE = 1e300  # regression labels must lie within +-FINITE: any real number, not inf


STEPS = 9  # what `validate_dataset` reports to `progress`: 3 reads, then one suite per table (6 at most)


def _run_gx(
    tables: dict[str, pd.DataFrame],
    suites: dict[str, list],
    say: Callable[[str], None] = lambda _m: None,
    spec: DatasetSpec | None = None,
) -> list[dict]:
    # lazy: Great Expectations takes 2-3 s to import; only validation needs it
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("stfn")
    out: list[dict] = []
    for table, expectations in suites.items():
        if table not in tables:
            continue
        say(f"expectations on {table} ({len(expectations)})")
        df = tables[table]
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
        index_cols = [c for c in ID_COLUMNS if c in df.columns]
        fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
        if index_cols:
            fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": index_cols}
        res = vd.run(batch_parameters={"dataframe": df}, result_format=fmt)
        for r in res.results:
            out.append(describe(table, r, df, spec))
    return out


def validate_dataset(
    folder: Path,
    max_missing_ratio: float = 0.30,
    report_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
    refused_report_path: Path | None = None,
    batch: bool = False,
) -> ValidationReport:
    """Validate a dataset folder against its `dataset.yaml`; raise `DataValidationError` on failure.
    `batch`: a batch for `stfn monitor` (labels optional, readings only finite, see `_suites`).

    Writes the full report to `report_path` (.json) and beside it (.html) when given. On failure
    it goes to `refused_report_path` instead when given (the project's own state folder: refused
    data leaves nothing among the project's outputs), and the error names it.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    spec = load_spec(folder)  # schema problems raise at once: nothing else can be checked
    say = progress or (lambda _msg: None)
    problems: list[dict] = []
    say("reading samples.parquet")
    samples = read_parquet(folder, SAMPLES_FILE, spec.name)
    say("reading series.parquet")
    series = read_parquet(folder, SERIES_FILE, spec.name)
    ids = samples["sample_id"] if "sample_id" in samples else pd.Series([], dtype=str)
    say("frames statistics")
    frames_tab, fp = _frames_table(folder, ids)
    problems += fp
    tables: dict[str, pd.DataFrame] = {
        "samples_types": _types_table(samples, ["sample_id", "label", "split", "timestamp"]),
        "samples": samples,
        "series_types": _types_table(series, ID_COLUMNS),
        "series": series,
    }
    if frames_tab is not None:
        tables["frames"] = frames_tab
    if "sample_id" in series and "sample_id" in samples:
        counts = series["sample_id"].astype(str).value_counts()
        all_ids = pd.Index(samples["sample_id"].astype(str)).union(counts.index)
        tables["coverage"] = pd.DataFrame(
            {
                "sample_id": all_ids,
                "n_steps": counts.reindex(all_ids, fill_value=0).to_numpy(),
                "in_samples": all_ids.isin(samples["sample_id"].astype(str)),
            }
        )
    results = problems + _run_gx(tables, _suites(spec, samples, series, max_missing_ratio, batch), say, spec)
    report = ValidationReport(
        spec.name, all(r["success"] for r in results), len(samples), results, time.perf_counter() - t0
    )
    where = report_path if report.success or refused_report_path is None else refused_report_path
    if where is not None:
        write_report(report, Path(where))
    if not report.success:
        raise DataValidationError(spec.name, report.failures, str(where) if where else None)
    return report
