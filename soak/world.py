"""The simulated world of a soak: the year's plan (which week brings what, where each fault falls)
and the batches themselves, all drawn from one seed.

A week's batch is labelled data in the dataset contract, drawn the way a team's new data would be:
- **clean**: new videos of the generator's *test* pool of handwriting (unseen writers, like the
  champion's own test split, not like its training pool): the monitor should stay quiet;
- **drifted**: a clean draw after the world changed (a sensor's gain or offset, a sensor that drops
  readings, darker frames): the monitor should alarm, the batch is appended and a retrain runs;
- **corrupt**: a batch a broken export would send (an infinite reading, a duplicate sample_id, a
  string `step`, frames outside 0..255): refused by validation, never appended.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stfn.config import MovingDigitsParams
from stfn.data.contract import write_dataset
from stfn.data.moving_digits import make_moving_digits

DATASET = "soak-digits"
DRIFTS = ("gain", "darker", "offset", "missing")
CORRUPTIONS = ("infinite reading", "duplicate sample_id", "string step", "frames out of range")
FAULTS = ("kill training", "kill append", "kill promotion", "kill endpoint", "kill mlflow", "disk full")
APPEND_STEPS = ("written", "swapped", "dvc-add", "dvc-push")  # stfn.stages.ingest.FAULT_STEPS
# a small world: a week's work (a monitor flow run, an append, sometimes a retrain) takes seconds
WORLD = MovingDigitsParams(
    n_train=600, n_val=150, n_test=250, canvas=32, digits_per_video=1, frames=4, steps=16, seed=7
)


@dataclass
class Week:
    week: int
    kind: str  # clean | drifted | corrupt
    detail: str = ""  # the drift or the corruption
    scheduled_retrain: bool = False  # the cron's retrain runs this week (after the batch)
    rollback: bool = False  # the team rolls @champion back this week (if there is an earlier one)
    faults: dict[str, float] = field(default_factory=dict)  # fault -> its seeded point (0..1, or a step)

    def row(self) -> dict:
        return asdict(self)


def plan(seed: int, weeks: int, retrain_every: int = 4, skip: frozenset[str] = frozenset()) -> list[Week]:
    """The year, from `seed`: the kind of each week's batch, the scheduled retrains, one rollback,
    and each fault once at a seeded week and point (those in `skip` left out, the rest where the
    seed puts them). Drifts take ~1 week in 8, corruptions ~1 in 12 (at least one of each from 3
    weeks on); week 1 is always clean."""
    rng = np.random.default_rng(seed)
    n_drift = max(1, round(weeks / 8)) if weeks >= 3 else 0
    n_corrupt = max(1, round(weeks / 12)) if weeks >= 3 else 0
    later = rng.permutation(np.arange(2, weeks + 1))
    drifted, corrupt = set(later[:n_drift].tolist()), set(later[n_drift : n_drift + n_corrupt].tolist())
    out = []
    for w in range(1, weeks + 1):
        if w in drifted:
            kind, detail = "drifted", DRIFTS[sorted(drifted).index(w) % len(DRIFTS)]
        elif w in corrupt:
            kind, detail = "corrupt", CORRUPTIONS[sorted(corrupt).index(w) % len(CORRUPTIONS)]
        else:
            kind, detail = "clean", ""
        out.append(Week(w, kind, detail, scheduled_retrain=w % retrain_every == 0))
    if weeks >= 2:  # the last week ends with a retrain, so every batch is trained on before the checks
        out[-1].scheduled_retrain = True
    retrain_weeks = [x.week for x in out if x.scheduled_retrain or x.kind == "drifted"]
    clean_weeks = [x.week for x in out if x.kind == "clean"] or [1]
    late = [w for w in retrain_weeks if w > weeks // 2] or retrain_weeks
    out[rng.choice(late) - 1].rollback = True if weeks >= 2 else False

    def place(fault: str, among: list[int], point: float) -> None:
        out[int(rng.choice(among)) - 1].faults[fault] = point

    place("kill training", retrain_weeks, float(rng.uniform(0, 1)))  # how far into training
    place("kill promotion", retrain_weeks, float(rng.uniform(0, 1.5)))  # seconds after evaluation ended
    place("kill mlflow", retrain_weeks, float(rng.uniform(2, 10)))  # seconds into the retrain
    place("kill append", clean_weeks, float(rng.integers(len(APPEND_STEPS))))  # after which step
    place("kill endpoint", list(range(1, weeks + 1)), float(rng.uniform(0, 1)))  # how far into the week
    place("disk full", list(range(1, weeks + 1)), 1.0)  # the inference log's disk full all week
    for w in out:
        w.faults = {f: v for f, v in w.faults.items() if f not in skip}
    return out


def initial(folder: Path, n_train: int = WORLD.n_train, name: str = DATASET) -> Path:
    """The dataset the year starts from (versioned before week 1): `n_train` training videos, and
    the validation and test splits of WORLD."""
    write_dataset(folder, *make_moving_digits(WORLD.model_copy(update={"n_train": n_train}), name=name))
    return folder


def batch(folder: Path, seed: int, week: Week, n: int, offset_std: float, name: str = DATASET) -> Path:
    """Week `week`'s batch of `n` labelled samples, ids prefixed `w<week>-`, without a split column
    (the append splits it like the dataset)."""
    spec, samples, series, frames = make_moving_digits(
        WORLD.model_copy(update={"n_train": 1, "n_val": 1, "n_test": n}),
        name=name,
        video_seed=seed * 1000 + week.week,
    )
    keep = samples["split"].to_numpy() == "test"  # the unseen writers' pool
    samples = samples.loc[keep].drop(columns="split").reset_index(drop=True)
    frames = np.asarray(frames)[keep]
    series = series[series["sample_id"].isin(samples["sample_id"])].reset_index(drop=True)
    prefix = f"w{week.week:02d}-"
    samples["sample_id"] = prefix + samples["sample_id"]
    series["sample_id"] = prefix + series["sample_id"]
    rng = np.random.default_rng(seed * 1000 + week.week)
    if week.kind == "drifted":
        series, frames = drift(week.detail, series, frames, offset_std, rng)
    elif week.kind == "corrupt":
        samples, series, frames = corrupt(week.detail, samples, series, frames)
    write_dataset(folder, spec, samples, series, frames)
    return folder


def drift(kind: str, series: pd.DataFrame, frames: np.ndarray, offset_std: float, rng: np.random.Generator):
    """The shifts benchmarks/monitor_power.py measures the monitor's power on (the missing readings
    halved: its 30 % sits on the contract's limit, and a batch past it is judged but not appended)."""
    series, frames = series.copy(), frames.copy()
    if kind == "gain":
        series["zone-0"] *= 1.5
    elif kind == "offset":
        series["zone-0"] += offset_std
    elif kind == "missing":  # 15 %: within the contract's data.max_missing_ratio (0.3), so the batch is data
        series.loc[rng.random(len(series)) < 0.15, "zone-0"] = np.nan
    elif kind == "darker":
        frames = np.rint(frames * 0.7).astype(frames.dtype)
    return series, frames


def corrupt(kind: str, samples: pd.DataFrame, series: pd.DataFrame, frames: np.ndarray):
    samples, series, frames = samples.copy(), series.copy(), frames.copy()
    if kind == "infinite reading":
        series.loc[series.index[3], "zone-1"] = np.inf
    elif kind == "duplicate sample_id":
        samples.loc[1, "sample_id"] = samples.loc[0, "sample_id"]
    elif kind == "string step":
        series["step"] = series["step"].astype(str)
    elif kind == "frames out of range":
        frames = frames.astype(np.float32)
        frames[0, 0, 0, 0, 0] = 300.0
    return samples, series, frames
