"""Two-shapes videos: a second classification generator for the tests, unlike moving-digits.

Each video holds two coloured shapes of different classes (square, plus, cross, disk, bar), one in
each half of a 16x16 RGB frame, jittering from frame to frame over a background noisy enough that
the shapes only partly stand out; a sensor per half spikes once. The label is the class of the
shape in the half whose sensor spiked: the series alone is at chance (1/5), the frames alone can
only guess between the two shapes (1/2).
Deterministic from the seed; written in the dataset contract with a `split` column (70/15/15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stfn.data.contract import Channel, DatasetSpec, FramesSpec, SeriesSpec, Target, write_dataset

SIZE, FRAMES, STEPS = 16, 2, 8
BACKGROUND, NOISE = 60, 45  # a noisy background the shapes stand out of only partly
CLASSES = ("square", "plus", "cross", "disk", "bar")


def _masks() -> np.ndarray:
    y, x = np.mgrid[:6, :6]
    square = np.minimum.reduce([y, x, 5 - y, 5 - x]) == 0
    plus = (np.abs(y - 2.5) < 1) | (np.abs(x - 2.5) < 1)
    cross = (y == x) | (y == 5 - x)
    disk = (y - 2.5) ** 2 + (x - 2.5) ** 2 <= 7
    bar = (y >= 2) & (y <= 3)
    return np.stack([square, plus, cross, disk, bar]).astype(np.float32)


def make_two_shapes(n: int, seed: int, name: str = "two-shapes", test_rows: int = 0):
    """`n` samples split 70/15/15; `test_rows` > 0: the test split has that many rows instead
    (drawn alike, beside the n), so a small dataset's accuracy is measured on enough rows."""
    extra = max(0, test_rows - (n - int(0.85 * n)))
    n_split, n = n, n + extra
    rng = np.random.default_rng(seed)
    masks = _masks()
    pair = np.stack([rng.choice(len(CLASSES), 2, replace=False) for _ in range(n)])  # (N, 2): left, right
    side = rng.integers(0, 2, n)  # which half's sensor spikes
    label = pair[np.arange(n), side]
    frames = rng.normal(BACKGROUND, NOISE, (n, FRAMES, 3, SIZE, SIZE))
    for i in range(n):
        colours = rng.uniform(90, 200, (2, 3))
        for f in range(FRAMES):
            for half in (0, 1):
                top = rng.integers(0, SIZE - 6 + 1)
                left = half * SIZE // 2 + rng.integers(0, SIZE // 2 - 6 + 1)
                m = masks[pair[i, half]]
                patch = frames[i, f, :, top : top + 6, left : left + 6]
                frames[i, f, :, top : top + 6, left : left + 6] = patch * (1 - m) + colours[half][:, None, None] * m
    series = rng.normal(0, 0.5, (n, STEPS, 2))
    spike_at = rng.integers(0, STEPS, n)
    series[np.arange(n), spike_at, side] += 3.0
    split = np.array(["train"] * n_split + ["test"] * extra, dtype=object)
    order = rng.permutation(n_split)
    split[order[int(0.7 * n_split) : int(0.85 * n_split)]] = "val"
    split[order[int(0.85 * n_split) :]] = "test"
    ids = [f"s{i:06d}" for i in range(n)]
    samples = pd.DataFrame({"sample_id": ids, "label": label.astype(np.int64), "split": split})
    long = pd.DataFrame({"sample_id": np.repeat(ids, STEPS), "step": np.tile(np.arange(STEPS, dtype=np.int64), n)})
    for c, ch in enumerate(("left", "right")):
        long[ch] = series[:, :, c].reshape(-1)
    spec = DatasetSpec(
        name=name,
        task="classification",
        target=Target(name="shape", classes=list(CLASSES)),
        series=SeriesSpec(
            steps=STEPS, channels=[Channel(name=ch, unit="a.u.", min=-10.0, max=10.0) for ch in ("left", "right")]
        ),
        frames=FramesSpec(count=FRAMES, channels=3, height=SIZE, width=SIZE, dtype="uint8", steps=[3, 7]),
        description="Two shapes, one per half of the frame; the spiking half's shape is the label.",
    )
    return spec, samples, long, np.clip(frames, 0, 255).astype(np.uint8)


def write_two_shapes(folder: Path, n: int, seed: int, test_rows: int = 0) -> Path:
    return write_dataset(folder, *make_two_shapes(n, seed, Path(folder).name, test_rows))
