"""The built-in dataset `moving-digits`: videos of real handwritten digits (scikit-learn's bundled
digits) moving on a canvas, and a sensor series per zone of the canvas that fires when a digit
enters it; the label is the digit that set off the alarm. The series alone is at chance, the
video alone can only guess among the digits present: the fused model must answer. Deterministic
from a seed; written in the dataset contract (`stfn.data.contract`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from stfn.config import MovingDigitsParams
from stfn.data.contract import SPLITS, Channel, DatasetSpec, FramesSpec, ProgressFn, SeriesSpec, Target

log = logging.getLogger(__name__)

DIGIT = 8  # side of a scikit-learn digit image, pixels


def _bounce(start: np.ndarray, velocity: np.ndarray, steps: int, limit: float) -> np.ndarray:
    """Positions [M, D, T] of points moving at constant velocity, reflected into [0, limit]."""
    t = np.arange(steps, dtype=np.float64)
    p = start[..., None] + velocity[..., None] * t
    m = np.mod(p, 2 * limit)
    return limit - np.abs(m - limit)


def frame_steps(steps: int, frames: int) -> list[int]:
    """The series step at which each frame is taken: evenly spaced, the last at T-1."""
    stride = steps // frames
    return [stride * (k + 1) - 1 for k in range(frames)]


def _digit_pools(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified pools of digit images for train / val / test (70/15/15)."""
    rng = np.random.default_rng(seed)
    pools: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = n_test = int(round(len(idx) * 0.15))
        pools["test"] += idx[:n_test].tolist()
        pools["val"] += idx[n_test : n_test + n_val].tolist()
        pools["train"] += idx[n_test + n_val :].tolist()
    return {s: np.array(sorted(v)) for s, v in pools.items()}


def _generate_split(
    p: MovingDigitsParams,
    split: str,
    n: int,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    rng: np.random.Generator,
    progress: ProgressFn | None,
) -> dict:
    """Generate `n` accepted videos of one split (vectorised in batches, rejected ones redrawn)."""
    L = p.canvas - DIGIT
    half = p.canvas / 2
    fsteps = np.array(frame_steps(p.steps, p.frames))
    D, F = p.digits_per_video, p.frames
    chunks: list[dict] = []
    done = 0
    while done < n:
        m = max(64, int((n - done) * 1.3))
        img_idx = pool[rng.integers(0, len(pool), size=(m, D))]
        start = rng.uniform(0, L, size=(m, D, 2))
        angle = rng.uniform(0, 2 * np.pi, size=(m, D))
        speed = rng.uniform(0.7, 1.8, size=(m, D))
        vel = np.stack([np.sin(angle), np.cos(angle)], -1) * speed[..., None]
        pos = np.rint(_bounce(start, vel, p.steps, L)).astype(np.int64)  # [m, D, 2(row,col), T]
        at_frames = pos[..., fsteps]  # [m, D, 2, F]
        centre = at_frames + DIGIT / 2
        zone = (centre[:, :, 0] >= half).astype(np.int64) * 2 + (centre[:, :, 1] >= half)  # [m, D, F]
        trig = rng.integers(0, D, size=m)
        ar = np.arange(m)
        tz = zone[ar, trig]  # [m, F]
        tpos = at_frames[ar, trig]  # [m, 2, F]
        others = np.ones((m, D), bool)
        others[ar, trig] = False
        same_zone = (zone == tz[:, None, :]) & others[..., None]
        overlap = (np.abs(at_frames - tpos[:, None]) < DIGIT).all(axis=2) & others[..., None]
        alone = ~(same_zone | overlap).any(axis=1)  # [m, F]
        ok = alone.any(axis=1)
        # Uniform choice among the frames where the trigger digit is alone in its zone.
        score = np.where(alone, rng.random((m, F)), -1.0)
        tframe = score.argmax(axis=1)
        keep = np.flatnonzero(ok)[: n - done]
        k = len(keep)
        tf = tframe[keep]
        chunks.append(
            dict(
                img_idx=img_idx[keep],
                pos=pos[keep],
                trig=trig[keep],
                tframe=tf,
                tzone=tz[keep, tf],
                trow=tpos[keep, 0, tf],
                tcol=tpos[keep, 1, tf],
            )
        )
        done += k
        if progress:
            progress(done, n)
    c = {key: np.concatenate([ch[key] for ch in chunks]) for key in chunks[0]}
    # Frames [n, F, 1, canvas, canvas]: paste each digit with a max-composite.
    frames = np.zeros((n, F, p.canvas, p.canvas), dtype=np.uint8)
    off = np.arange(DIGIT)
    nn = np.arange(n)[:, None, None, None]
    ff = np.arange(F)[None, :, None, None]
    for d in range(D):
        img = images[c["img_idx"][:, d]]  # [n, 8, 8]
        r = c["pos"][:, d, 0][:, fsteps][:, :, None, None] + off[None, None, :, None]  # [n, F, 8, 1]
        q = c["pos"][:, d, 1][:, fsteps][:, :, None, None] + off[None, None, None, :]  # [n, F, 1, 8]
        frames[nn, ff, r, q] = np.maximum(frames[nn, ff, r, q], img[:, None])
    # Sensors [n, T, 4]: offset + slow drift + noise, one spike in the trigger zone's channel.
    t = np.arange(p.steps)
    offset = rng.uniform(-2, 2, size=(n, 1, 4))
    period = rng.uniform(40, 120, size=(n, 1, 4))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 4))
    amp = p.drift * rng.uniform(0.5, 1.0, size=(n, 1, 4))
    series = offset + amp * np.sin(2 * np.pi * t[None, :, None] / period + phase)
    series = series + rng.normal(0, p.noise, size=series.shape)
    tstep = fsteps[c["tframe"]]
    series[np.arange(n), tstep, c["tzone"]] += p.spike * rng.uniform(0.8, 1.2, size=n)
    missing = rng.random(series.shape) < p.missing_rate
    missing[np.arange(n), tstep, c["tzone"]] = False  # the spike itself is never lost
    series[missing] = np.nan
    trig_label = labels[c["img_idx"][np.arange(n), c["trig"]]]
    return dict(
        frames=frames[:, :, None],
        series=series.astype(np.float32),
        label=trig_label.astype(np.int64),
        meta=pd.DataFrame(
            {
                "trigger_frame": c["tframe"].astype(np.int64),
                "trigger_step": tstep.astype(np.int64),
                "trigger_zone": c["tzone"].astype(np.int64),
                "trigger_row": c["trow"].astype(np.int64),
                "trigger_col": c["tcol"].astype(np.int64),
                "digits": [" ".join(map(str, labels[r])) for r in c["img_idx"]],
            }
        ),
    )


def make_moving_digits(
    p: MovingDigitsParams,
    name: str = "moving-digits",
    progress: Callable[[str, int, int], None] | None = None,
    video_seed: int | None = None,
) -> tuple[DatasetSpec, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Generate `moving-digits`, deterministically from `p.seed`.

    `p.seed` splits the digit images (writers) into the train / val / test pools; `video_seed`
    (default: `p.seed`) draws the videos. Another `video_seed` with the same `p.seed` gives new
    videos of the same pools: more unseen test data, drawn like the dataset's own test split.

    Real handwritten digits (scikit-learn's bundled 8x8 `load_digits`) bounce on a canvas; one
    sensor per quadrant zone. In each sample the trigger digit is chosen uniformly among the
    digits, then a frame at which it is alone in its zone (and overlaps no other digit); that
    zone's sensor spikes at that frame's step, and the label is the trigger digit's class.
    """
    if p.steps < p.frames:
        raise ValueError(f"prepare.moving_digits: steps ({p.steps}) must be >= frames ({p.frames})")
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    pools = _digit_pools(labels, p.seed)
    rng = np.random.default_rng(p.seed if video_seed is None else video_seed)
    parts = []
    for split, n in (("train", p.n_train), ("val", p.n_val), ("test", p.n_test)):
        cb = (lambda d, tot, s=split: progress(s, d, tot)) if progress else None
        parts.append((split, _generate_split(p, split, n, images, labels, pools[split], rng, cb)))
    samples = pd.concat(
        [
            pd.DataFrame(
                {"sample_id": [f"{split}-{i:06d}" for i in range(len(g["label"]))], "label": g["label"], "split": split}
            ).join(g["meta"])
            for split, g in parts
        ],
        ignore_index=True,
    )
    series3 = np.concatenate([g["series"] for _, g in parts])
    frames = np.concatenate([g["frames"] for _, g in parts])
    names = [f"zone-{z}" for z in range(4)]
    n, T = len(samples), p.steps
    series = pd.DataFrame(
        {"sample_id": np.repeat(samples["sample_id"].to_numpy(), T), "step": np.tile(np.arange(T, dtype=np.int64), n)}
    )
    for c, ch in enumerate(names):
        series[ch] = series3[:, :, c].reshape(-1)
    centre = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]  # (row, col) of each zone
    spec = DatasetSpec(
        name=name,
        task="classification",
        target=Target(name="trigger_digit", classes=[str(i) for i in range(10)]),
        series=SeriesSpec(
            steps=T,
            channels=[Channel(name=ch, unit="a.u.", min=-12.0, max=12.0) for ch in names],
        ),
        frames=FramesSpec(
            count=p.frames,
            channels=1,
            height=p.canvas,
            width=p.canvas,
            dtype="uint8",
            steps=frame_steps(p.steps, p.frames),
        ),
        sensors={ch: centre[z] for z, ch in enumerate(names)},
        source={"generator": "moving-digits", "params": p.model_dump(mode="json")},
        description=(
            "Handwritten digits (scikit-learn load_digits) bouncing on a canvas; one sensor per "
            "quadrant spikes when the trigger digit is alone in it; label = that digit's class."
        ),
    )
    return spec, samples, series, frames
