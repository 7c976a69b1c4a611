"""The dataset contract (v1): its schema, the one reader of `dataset.yaml`, readers and writers of
the other files, splits.

A dataset is a folder:
- `dataset.yaml`      name, task, target, series (steps, channels), frames (shape, steps), sensors
- `samples.parquet`   sample_id (unique str), label, optional split / timestamp, free metadata
- `series.parquet`    long format: sample_id, step (0..T-1), one float column per channel
- `frames.npy`        [N, F, C, H, W] uint8 or float32, row order = samples.parquet

Dimension letters used everywhere: N samples, B batch, T series steps, C channels, F frames,
H/W frame height/width, D feature width.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sklearn.model_selection import train_test_split

from stfn.errors import DataValidationError, Failure
from stfn.fileio import atomic_dir

log = logging.getLogger(__name__)

SPEC_FILE, SAMPLES_FILE, SERIES_FILE, FRAMES_FILE = (
    "dataset.yaml",
    "samples.parquet",
    "series.parquet",
    "frames.npy",
)
CONTRACT_FILES = (SPEC_FILE, SAMPLES_FILE, SERIES_FILE, FRAMES_FILE)
SPLITS = ("train", "val", "test")
NAME_RE = re.compile(r"^[a-z0-9-]{1,64}$")
RESERVED_COLUMNS = {"sample_id", "step", "label", "split", "timestamp"}
# Refuse shapes that would exhaust memory before anything is read (per-sample element counts).
MAX_SERIES_ELEMENTS = 10_000_000
MAX_FRAME_ELEMENTS = 50_000_000

ProgressFn = Callable[[int, int], None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Strict):
    name: str = Field(min_length=1)
    classes: list[str] | None = None
    unit: str | None = Field(None, min_length=1)
    channel: str | None = None  # regression: the series channel whose future value the target is (persistence)

    @model_validator(mode="after")
    def _classes(self) -> Target:
        names = self.classes or []
        if any(not c.strip() for c in names) or len(set(names)) != len(names):
            raise ValueError(f"target.classes: expected distinct, non-empty class names, got {names}")
        return self


class Channel(_Strict):
    name: str = Field(min_length=1)
    unit: str | None = Field(None, min_length=1)
    min: float | None = Field(None, allow_inf_nan=False)  # physical bounds: finite numbers, or null
    max: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> Channel:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"channel '{self.name}': min {self.min} > max {self.max}")
        return self


class SeriesSpec(_Strict):
    steps: int = Field(gt=0)
    channels: list[Channel] = Field(min_length=1)


class FramesSpec(_Strict):
    count: int = Field(gt=0)
    channels: int = Field(gt=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dtype: Literal["uint8", "float32"]
    steps: list[int]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.channels, self.height, self.width)


class DatasetSpec(_Strict):
    """The parsed and checked `dataset.yaml`."""

    name: str
    task: Literal["classification", "regression"]
    target: Target
    series: SeriesSpec
    frames: FramesSpec
    sensors: dict[str, tuple[float, float]] | None = None
    description: str | None = None
    source: dict[str, Any] | None = None  # how the dataset was made (generator or importer, params)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if not NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: expected 1-64 characters of a-z, 0-9 and '-'")
        if self.task == "classification":
            if not self.target.classes or len(self.target.classes) < 2:
                raise ValueError("target.classes: a classification dataset needs at least 2 class names")
        elif self.target.classes:
            raise ValueError("target.classes: a regression dataset has a unit, not classes")
        names = [c.name for c in self.series.channels]
        if self.target.channel is not None and self.target.channel not in names:
            raise ValueError(f"target.channel: '{self.target.channel}' is not a series channel {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"series.channels: duplicate channel names {names}")
        clash = RESERVED_COLUMNS & set(names)
        if clash:
            raise ValueError(f"series.channels: names {sorted(clash)} are reserved column names")
        f = self.frames
        if len(f.steps) != f.count:
            raise ValueError(f"frames.steps: expected {f.count} entries (frames.count), got {len(f.steps)}")
        if any(s < 0 or s >= self.series.steps for s in f.steps):
            raise ValueError(f"frames.steps: every step must be in [0, {self.series.steps - 1}], got {f.steps}")
        if any(b < a for a, b in zip(f.steps, f.steps[1:], strict=False)):
            raise ValueError(f"frames.steps: must be non-decreasing, got {f.steps}")
        if self.series.steps * len(names) > MAX_SERIES_ELEMENTS:
            raise ValueError(f"series: {self.series.steps} steps x {len(names)} channels is too large")
        if int(np.prod(f.shape)) > MAX_FRAME_ELEMENTS:
            raise ValueError(f"frames: shape {list(f.shape)} per sample is too large")
        for ch, pos in (self.sensors or {}).items():
            if ch not in names:
                raise ValueError(f"sensors: '{ch}' is not a series channel {names}")
            if not all(0.0 <= v <= 1.0 for v in pos):
                raise ValueError(f"sensors.{ch}: coordinates must be in [0, 1], got {list(pos)}")
        return self

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.series.channels]

    @property
    def n_classes(self) -> int:
        return len(self.target.classes or [])


def dvc_caches(folder: Path) -> list[Path]:
    """The DVC caches of the repository around `folder`: `.dvc/cache`, or the `cache.dir` its
    `.dvc/config` / `.dvc/config.local` set (what `dvc checkout` links a dataset's files into)."""
    import configparser

    for root in (folder, *folder.parents):
        dvc = root / ".dvc"
        if not dvc.is_dir():
            continue
        caches = [dvc / "cache"]
        for name in ("config", "config.local"):
            cfg = configparser.ConfigParser(strict=False, interpolation=None)
            try:
                cfg.read(dvc / name)
            except configparser.Error:
                continue
            if cfg.has_option("cache", "dir"):
                caches.append((dvc / cfg.get("cache", "dir").strip().strip("'\"")).resolve())
        return caches
    return []


def check_links(folder: Path, name: str) -> None:
    """Refuse a contract file that is a link resolving outside both the dataset folder and the
    project's DVC cache (DVC's own symlink/hardlink checkouts point into the cache): such a file
    would make validation and training read whatever it points at."""
    folder = Path(folder)
    inside = [folder.resolve(), *(c.resolve() for c in dvc_caches(folder.resolve()))]
    bad = []
    for f in CONTRACT_FILES:
        path = folder / f
        if not path.is_symlink():
            continue
        real = path.resolve()
        if not any(real == base or base in real.parents for base in inside):
            bad.append(Failure(f, None, "a file in the dataset folder or the DVC cache", f"a link to {real}; refused"))
    if bad:
        raise DataValidationError(name, bad)


def load_spec(folder: Path) -> DatasetSpec:
    """Read and check `dataset.yaml`; every problem is a `DataValidationError` naming the field."""
    folder = Path(folder)
    path = folder / SPEC_FILE
    name = folder.name
    if not folder.is_dir():
        raise DataValidationError(name, [Failure(str(folder), None, "dataset folder exists", "no such folder")])
    missing = [f for f in CONTRACT_FILES if not (folder / f).is_file()]
    if missing:
        raise DataValidationError(name, [Failure(f, None, "file exists", f"missing from {folder}") for f in missing])
    check_links(folder, name)
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataValidationError(name, [Failure(SPEC_FILE, None, "valid YAML", str(exc))]) from None
    if not isinstance(raw, dict):
        raise DataValidationError(name, [Failure(SPEC_FILE, None, "a mapping", f"got {type(raw).__name__}")])
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        failures = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or None
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            failures.append(Failure(SPEC_FILE, field, "dataset.yaml schema", msg))
        raise DataValidationError(str(raw.get("name", name)), failures) from None


def read_parquet(folder: Path, file: str, dataset: str, filters: list | None = None) -> pd.DataFrame:
    """Read one table of the contract (optionally only the rows matching pyarrow `filters`)."""
    try:
        return pd.read_parquet(Path(folder) / file, filters=filters)
    except Exception as exc:  # noqa: BLE001 - any reader error becomes a contract failure
        raise DataValidationError(
            dataset, [Failure(file, None, "a readable parquet file", f"{type(exc).__name__}: {exc}")]
        ) from None


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a C-ordered .npy file, read without loading or unpickling."""
    with open(path, "rb") as fh:
        major, _minor = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fh, max_header_size=100_000)
        if fortran:
            raise ValueError("Fortran-ordered arrays are not supported")
        return tuple(int(d) for d in shape), dtype, fh.tell()


class NpyRows:
    """Rows of a C-ordered .npy file read with plain file reads into fresh buffers. Unlike a memory
    map, whose pages stay mapped (and counted) in the process once touched, streaming a file of any
    size through this costs one chunk of memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shape, self.dtype, self.offset = read_npy_header(self.path)
        self.row_items = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.shape[0])
        n = max(0, stop - start)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.row_items * self.dtype.itemsize)
            flat = np.fromfile(fh, dtype=self.dtype, count=n * self.row_items)
        return flat.reshape(n, *self.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self.read(start, stop)
        rows = np.asarray(key)
        if rows.size == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        lo = int(rows.min())
        return self.read(lo, int(rows.max()) + 1)[rows - lo]


def write_npy_chunks(path: Path, shape: tuple[int, ...], dtype, chunks) -> None:
    """Write a .npy file from an iterable of row blocks (no memory map: bounded memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for block in chunks:
            fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def open_frames(folder: Path, spec: DatasetSpec, n_samples: int | None = None) -> np.ndarray:
    """Memory-map `frames.npy` after checking its header against the spec and the file size.

    Never unpickles (`allow_pickle=False`); a truncated file is an error, not a crash.
    """
    path = Path(folder) / FRAMES_FILE
    fail = lambda what, detail: DataValidationError(spec.name, [Failure(FRAMES_FILE, None, what, detail)])  # noqa: E731
    try:
        shape, dtype, offset = read_npy_header(path)
    except Exception as exc:  # noqa: BLE001
        raise fail("a .npy array file", f"unreadable header ({exc})") from None
    if dtype.hasobject:
        raise fail("a numeric array", "holds Python objects (pickled); refused")
    if str(dtype) != spec.frames.dtype:
        raise fail(f"dtype {spec.frames.dtype} (dataset.yaml frames.dtype)", f"got {dtype}")
    expected = spec.frames.shape
    if len(shape) != 5 or tuple(shape[1:]) != expected:
        raise fail(f"shape [N, {', '.join(map(str, expected))}] (dataset.yaml frames)", f"got {list(shape)}")
    if n_samples is not None and shape[0] != n_samples:
        raise fail(f"{n_samples} samples (rows of samples.parquet)", f"got {shape[0]}")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        raise fail("complete file", f"truncated: {have} bytes, header promises {need}")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def series_array(series: pd.DataFrame, sample_ids: pd.Series, spec: DatasetSpec) -> np.ndarray:
    """Long-format series -> float32 array [N, T, C] in `sample_ids` order (NaN = missing)."""
    n, t, names = len(sample_ids), spec.series.steps, spec.channel_names
    index = pd.Index(sample_ids.astype(str))
    rows = index.get_indexer(series["sample_id"].astype(str))
    steps = series["step"].to_numpy()
    keep = (rows >= 0) & (steps >= 0) & (steps < t)
    out = np.full((n, t, len(names)), np.nan, dtype=np.float32)
    out[rows[keep], steps[keep].astype(np.int64)] = series.loc[keep, names].to_numpy(np.float32)
    return out


def assign_split(
    samples: pd.DataFrame, spec: DatasetSpec, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, str]:
    """The split of every sample and how it was made.

    A `split` column is used as given; otherwise a `timestamp` column splits by time (latest
    samples to test); otherwise a seeded split, stratified by label for classification.
    """
    n = len(samples)
    if "split" in samples.columns:
        return samples["split"].astype(str).to_numpy(), "given (samples.parquet split column)"
    out = np.empty(n, dtype=object)
    n_test = max(1, int(round(n * test_fraction)))
    n_val = int(round(n * val_fraction))
    if "timestamp" in samples.columns:
        order = np.argsort(pd.to_datetime(samples["timestamp"]).to_numpy(), kind="stable")
        out[order[: n - n_val - n_test]] = "train"
        out[order[n - n_val - n_test : n - n_test]] = "val"
        out[order[n - n_test :]] = "test"
        return out, "by time (timestamp column): latest samples are test"
    idx = np.arange(n)
    labels = samples["label"].to_numpy()
    strat = labels if spec.task == "classification" and np.unique(labels, return_counts=True)[1].min() >= 3 else None
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=strat)
    out[test] = "test"
    if n_val:
        strat_rest = labels[rest] if strat is not None else None
        train, val = train_test_split(rest, test_size=n_val, random_state=seed, stratify=strat_rest)
        out[val] = "val"
    else:
        train = rest
    out[train] = "train"
    how = "seeded stratified random split" if strat is not None else "seeded random split"
    return out, f"{how} (seed {seed})"


def write_dataset(
    folder: Path, spec: DatasetSpec, samples: pd.DataFrame, series: pd.DataFrame, frames: np.ndarray
) -> Path:
    """Write a dataset in the contract, atomically (the folder appears whole or not at all)."""
    with atomic_dir(Path(folder)) as tmp:
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False))
        samples.to_parquet(tmp / SAMPLES_FILE, index=False)
        series.to_parquet(tmp / SERIES_FILE, index=False)
        np.save(tmp / FRAMES_FILE, np.ascontiguousarray(frames), allow_pickle=False)
    return Path(folder)
