"""The inference log of `stfn serve`: a row per sample answered (when, request, model version,
the input's summary, the prediction), buffered and written every `flush_seconds` as parquet files
under `.stfn/inference/<dataset>/` (atomically; files older than `keep_days` deleted, and the oldest
beyond `max_mb` in all), and read back by `stfn monitor` like a batch."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stfn.fileio import atomic_path
from stfn.inference import Predictor

log = logging.getLogger(__name__)


class InferenceLog:
    """Rows of served predictions, buffered in memory and written every `flush_seconds` as one
    parquet file `<UTC time>-<pid>-<n>.parquet` in `folder` (atomically: a reader never sees half a
    file); at each flush, files older than `keep_days` are deleted, then the oldest while the folder
    holds more than `max_mb` (the rotation: by age for the monitor's window, by size for the disk). `read()` gives
    the whole log as one table, which is what `stfn monitor` reads. A request only appends a few
    small arrays (`Summary`); the tables are built by the flushing thread, off the request path."""

    def __init__(self, folder: Path, flush_seconds: float = 5.0, keep_days: float = 30.0, max_mb: float = 1024.0):
        self.folder, self.flush_seconds, self.keep_days = Path(folder), flush_seconds, keep_days
        self.max_bytes = int(max_mb * 2**20)
        self._rows: list[Summary] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        self._thread: threading.Thread | None = None

    def append(self, summary: Summary) -> None:
        with self._lock:
            self._rows.append(summary)

    def start(self) -> None:
        import pyarrow.parquet  # noqa: F401 - now, not at the first flush (~1 s holding the GIL mid-traffic)

        self._thread = threading.Thread(target=self._loop, name="inference-log", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> Path | None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._n += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            path = self.folder / f"{stamp}-{os.getpid()}-{self._n:05d}.parquet"
            table = summaries_table(rows)
            with atomic_path(path) as tmp:
                table.to_parquet(tmp, index=False)
            self._prune()
            return path
        except Exception:  # noqa: BLE001 - the log must never take the endpoint down
            log.exception("could not write the inference log to %s", self.folder)
            return None

    def _prune(self) -> None:
        cutoff = time.time() - self.keep_days * 86400
        kept = []
        for f in sorted(self.folder.glob("*.parquet")):  # oldest first: the names start with the UTC time
            st = f.stat()
            if st.st_mtime < cutoff:
                f.unlink(missing_ok=True)
            else:
                kept.append((f, st.st_size))
        total = sum(size for _, size in kept)
        for f, size in kept[:-1]:  # the newest file always stays
            if total <= self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size

    @staticmethod
    def read(folder: Path) -> pd.DataFrame:
        """Every logged row under `folder`, oldest first (an empty table when there is none)."""
        files = sorted(Path(folder).glob("*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("time", kind="stable")


@dataclass
class Summary:
    """One answered request, reduced in the request path to per-sample numbers (cheap numpy
    reductions): the input's per-channel means and missing share, the output."""

    time: float
    request_id: str
    model: str
    version: int
    predictor: Predictor
    series_shape: tuple
    frames_shape: tuple
    series_mean: np.ndarray  # (N, C)
    series_missing: np.ndarray  # (N,)
    frames_mean: np.ndarray  # (N, frame channels)
    out: np.ndarray  # (N, K) probabilities or (N,) values

    @classmethod
    def of(cls, predictor: Predictor, series: np.ndarray, frames: np.ndarray, out: np.ndarray, **who) -> Summary:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing channel has no mean
            s_mean = np.nanmean(series, axis=1)
        return cls(
            time=time.time(),
            predictor=predictor,
            series_shape=tuple(series.shape[1:]),
            frames_shape=tuple(frames.shape[1:]),
            series_mean=s_mean,
            series_missing=np.isnan(series).mean(axis=(1, 2)),
            frames_mean=frames.mean(axis=(1, 3, 4), dtype=np.float64),
            out=np.asarray(out),
            **who,
        )

    def table(self) -> pd.DataFrame:
        return summaries_table([self])


def summaries_table(summaries: list[Summary]) -> pd.DataFrame:
    """A row per sample of every summary: time, request, model version, the input summary, the
    prediction. Built column by column over all the requests at once (one DataFrame per served
    version, not per request: per request it cost ~1 ms of the serving process's time)."""
    groups: dict[int, list[Summary]] = {}
    for s in summaries:
        groups.setdefault(id(s.predictor), []).append(s)
    return pd.concat([_group_table(g) for g in groups.values()], ignore_index=True)


def _group_table(rows: list[Summary]) -> pd.DataFrame:
    p = rows[0].predictor
    n = np.array([len(r.out) for r in rows])
    rep = lambda values: np.repeat(np.asarray(values, dtype=object), n)  # noqa: E731
    cols: dict[str, Any] = {
        "time": pd.to_datetime(np.repeat([r.time for r in rows], n), unit="s", utc=True).astype("datetime64[us, UTC]"),
        "request_id": rep([r.request_id for r in rows]),
        "model": rep([r.model for r in rows]),
        "version": np.repeat([r.version for r in rows], n),
        "row": np.concatenate([np.arange(k) for k in n]),
        "series_shape": rep([str(r.series_shape) for r in rows]),
        "frames_shape": rep([str(r.frames_shape) for r in rows]),
        "series_missing": np.concatenate([r.series_missing for r in rows]),
    }
    series_mean = np.concatenate([r.series_mean for r in rows])
    frames_mean = np.concatenate([r.frames_mean for r in rows])
    out = np.concatenate([r.out for r in rows])
    for k, name in enumerate(p.channels):
        cols[f"series_mean_{name}"] = series_mean[:, k]
    for c in range(frames_mean.shape[1]):
        cols[f"frames_mean_{c}"] = frames_mean[:, c]
    if p.task == "classification":
        cols["prediction"] = out.argmax(axis=1)
        cols["predicted_class"] = np.asarray(p.classes, dtype=object)[cols["prediction"]]
        for k, name in enumerate(p.classes):
            cols[f"prob_{name}"] = out[:, k]
    else:
        cols["prediction"] = out
    return pd.DataFrame(cols)
