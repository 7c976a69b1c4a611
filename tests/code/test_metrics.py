"""The evaluation's metrics against reference implementations (scikit-learn, scipy) on random
inputs, through the public names the pipeline calls (`stfn.evaluation.softmax`,
`classification_metrics`, `calibration`, `regression_metrics`, `pointing_score`): whatever
computes them inside, these are the results they must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
from sklearn import metrics as sk

from stfn import evaluation as ev

K = 5
NAMES = [f"c{i}" for i in range(K)]


def _random_case(seed: int, n: int = 400, k: int = K, absent: tuple[int, ...] = ()):
    """Labels in 0..k-1 (without the `absent` classes) and softmax probabilities that agree with
    them often enough for every cell of the confusion matrix to be exercised."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(k) if c not in absent])
    labels = rng.choice(present, size=n)
    logits = rng.normal(0.0, 1.5, size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(0.0, 3.0, size=n)
    return labels, scipy.special.softmax(logits, axis=1)


# ------------------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("shape", [(7,), (50, K), (4, 6, 3)])
def test_softmax_matches_scipy(shape):
    logits = np.random.default_rng(1).normal(0.0, 4.0, size=shape)
    np.testing.assert_allclose(ev.softmax(logits), scipy.special.softmax(logits, axis=-1), rtol=1e-12, atol=0)


def test_softmax_of_huge_logits_is_exact_not_nan():
    logits = np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4, -1e4]])
    out = ev.softmax(logits)
    np.testing.assert_allclose(out, scipy.special.softmax(logits, axis=-1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(out[1], [1 / 3, 1 / 3, 1 / 3], rtol=1e-12)


# ---------------------------------------------------------------------- classification metrics


def _check_against_sklearn(labels, probs):
    out = ev.classification_metrics(labels, probs, NAMES)
    pred = probs.argmax(1)
    every = list(range(K))
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred), abs=1e-12)
    # macro-F1 over the classes present in the labels (a class that never occurs does not count,
    # even when it is predicted): scikit-learn's f1_score with labels=np.unique(y_true)
    macro = sk.f1_score(labels, pred, labels=np.unique(labels), average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert m["nll"] == pytest.approx(sk.log_loss(labels, probs, labels=every), rel=1e-9)
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, pred, labels=every, zero_division=0)
    assert [r["class"] for r in out["per_class"]] == NAMES
    np.testing.assert_allclose([r["precision"] for r in out["per_class"]], precision, atol=1e-12)
    np.testing.assert_allclose([r["recall"] for r in out["per_class"]], recall, atol=1e-12)
    np.testing.assert_allclose([r["f1"] for r in out["per_class"]], f1, atol=1e-12)
    assert [r["support"] for r in out["per_class"]] == support.tolist()
    assert out["confusion_matrix"] == sk.confusion_matrix(labels, pred, labels=every).tolist()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    labels, probs = _random_case(seed)
    out = _check_against_sklearn(labels, probs)
    assert 0.3 < out["metrics"]["accuracy"] < 0.95  # the case is neither trivial nor hopeless


def test_a_class_absent_from_the_labels_but_predicted_is_left_out_of_macro_f1():
    labels, probs = _random_case(3, absent=(2,))
    pred = probs.argmax(1)
    assert 2 not in labels and (pred == 2).any()  # the case this test is about
    out = _check_against_sklearn(labels, probs)
    row = out["per_class"][2]
    assert row["support"] == 0 and row["precision"] == row["recall"] == row["f1"] == 0.0
    present = [r["f1"] for r in out["per_class"] if r["support"] > 0]
    assert out["metrics"]["macro_f1"] == pytest.approx(np.mean(present), abs=1e-12)
    # over all five classes (scikit-learn's default labels=None) it would be lower
    all_five = sk.f1_score(labels, pred, labels=list(range(K)), average="macro", zero_division=0)
    assert out["metrics"]["macro_f1"] > all_five + 0.05


def test_a_class_neither_present_nor_predicted():
    labels, probs = _random_case(4, absent=(4,))
    probs[:, 4] = 0.0  # never predicted either
    probs /= probs.sum(1, keepdims=True)
    out = _check_against_sklearn(labels, probs)
    assert out["per_class"][4] == {"class": "c4", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert out["confusion_matrix"][4] == [0] * K and [row[4] for row in out["confusion_matrix"]] == [0] * K


# ------------------------------------------------------------------------------------ calibration


def _ece_by_hand(labels, probs, bins):
    """Equal-width confidence bins (lo, hi], the first one closed at 0: sum over the bins of the
    share of samples in the bin times |mean confidence - accuracy| there."""
    members: dict[int, list[tuple[float, float]]] = {}
    for y, p in zip(labels, probs, strict=True):
        conf = float(max(p))
        b = max(math.ceil(conf * bins) - 1, 0)
        members.setdefault(b, []).append((conf, float(int(np.argmax(p)) == int(y))))
    ece = 0.0
    for rows in members.values():
        conf = sum(c for c, _ in rows) / len(rows)
        acc = sum(a for _, a in rows) / len(rows)
        ece += len(rows) / len(labels) * abs(conf - acc)
    return ece, {b: len(rows) for b, rows in members.items()}


@pytest.mark.parametrize("seed,bins", [(0, 15), (1, 15), (2, 10)])
def test_calibration_matches_sklearn_brier_and_an_ece_by_hand(seed, bins):
    labels, probs = _random_case(seed)
    out = ev.calibration(labels, probs, bins=bins)
    brier = sk.brier_score_loss(labels, probs, labels=list(range(K)), scale_by_half=False)
    assert out["brier"] == pytest.approx(brier, rel=1e-12)  # sum over classes, mean over samples
    ece, counts = _ece_by_hand(labels, probs, bins)
    assert out["ece"] == pytest.approx(ece, rel=1e-9)
    assert {round(r["lo"] * bins): r["count"] for r in out["reliability"]} == counts
    assert sum(r["count"] for r in out["reliability"]) == len(labels)


def test_calibration_of_a_certain_and_always_right_model_is_perfect():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    out = ev.calibration(labels, probs)
    assert out["ece"] == 0.0 and out["brier"] == 0.0
    assert out["reliability"] == [{"lo": 14 / 15, "hi": 1.0, "confidence": 1.0, "accuracy": 1.0, "count": 4}]


def test_calibration_of_a_certain_and_always_wrong_model():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[(labels + 1) % 3]
    out = ev.calibration(labels, probs)
    assert out["ece"] == 1.0 and out["brier"] == 2.0  # (1 - 0)^2 + (0 - 1)^2 per sample


# ---------------------------------------------------------------------------------- regression


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(10.0, 3.0, size=300)
    pred = y + rng.normal(0.5, 2.0, size=300)
    m = ev.regression_metrics(y, pred)["metrics"]
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(y, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(sk.root_mean_squared_error(y, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(sk.mean_squared_error(y, pred)), rel=1e-12)
    assert m["r2"] == pytest.approx(sk.r2_score(y, pred), rel=1e-12)
    worse = ev.regression_metrics(y, np.full_like(y, y.mean() + 5.0))["metrics"]
    assert worse["r2"] == pytest.approx(sk.r2_score(y, np.full_like(y, y.mean() + 5.0)), rel=1e-12) and worse["r2"] < 0


def test_r2_of_a_constant_target_predicted_wrongly_is_zero_as_in_sklearn():
    y = np.full(20, 4.0)
    pred = np.linspace(3.0, 5.0, 20)
    assert ev.regression_metrics(y, pred)["metrics"]["r2"] == 0.0 == sk.r2_score(y, pred)


# ------------------------------------------------------------------------------------- pointing
# attention (S, F/tubelet, h, w) over frames of frame_size px; the trigger digit's box is `box` px
# square with top-left (row, col); with tubelets, attention step k covers frames k*t .. k*t+t-1

FRAME = (32, 32)  # a 4x4 grid of 8-px cells


def _attention(steps: int, peaks: list[tuple[int, int, int]]) -> np.ndarray:
    """One sample per peak (step, cell row, cell column): uniform low attention, one high cell."""
    att = np.full((len(peaks), steps, 4, 4), 0.01)
    for s, (k, i, j) in enumerate(peaks):
        att[s, k, i, j] = 1.0
    return att


def test_pointing_with_tubelet_1_compares_the_frame_itself():
    # trigger digit in frame 2, box at px (8, 16): cell (1, 2) exactly
    frame, row, col = np.array([2, 2, 2, 2]), np.array([8, 8, 8, 8]), np.array([16, 16, 16, 16])
    att = _attention(4, [(2, 1, 2), (1, 1, 2), (2, 0, 0), (3, 1, 2)])  # hit, earlier frame, wrong cell, later
    hits = [
        ev.pointing_score(att[s : s + 1], frame[s : s + 1], row[s : s + 1], col[s : s + 1], FRAME) for s in range(4)
    ]
    assert hits == [1.0, 0.0, 0.0, 0.0]
    assert ev.pointing_score(att, frame, row, col, FRAME, box=8, tubelet=1) == 0.25


def test_pointing_with_tubelet_2_compares_the_step_that_covers_the_frame():
    # 6 frames -> 3 attention steps: step 0 = frames 0-1, step 1 = frames 2-3, step 2 = frames 4-5
    frame = np.array([3, 2, 5, 2, 3, 1])
    row = np.array([8, 8, 20, 8, 8, 8])  # sample 2: a box at px (20, 4) overlaps cells (2|3, 0|1)
    col = np.array([16, 16, 4, 16, 16, 16])
    att = _attention(
        3,
        [
            (1, 1, 2),  # frame 3 is in step 1, the box's cell: hit
            (1, 1, 2),  # frame 2 is in step 1 too: hit
            (2, 3, 0),  # frame 5 is in step 2, a cell the box overlaps: hit
            (2, 1, 2),  # step 2 = the frame's index, but it covers frames 4-5: miss
            (0, 1, 2),  # the step before: miss
            (0, 0, 0),  # the right step (frame 1 is in step 0), a cell the box misses: miss
        ],
    )

    def one(s: int, tubelet: int) -> float:
        return ev.pointing_score(
            att[s : s + 1], frame[s : s + 1], row[s : s + 1], col[s : s + 1], FRAME, tubelet=tubelet
        )

    assert [one(s, 2) for s in range(6)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert ev.pointing_score(att, frame, row, col, FRAME, box=8, tubelet=2) == 0.5
    # the same maps read as frame indices (tubelet 1) point at the wrong time, except sample 3
    assert [one(s, 1) for s in range(6)] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert ev.pointing_score(att, frame, row, col, FRAME, box=8, tubelet=1) == pytest.approx(1 / 6)


def test_pointing_cell_overlap_uses_the_box_extent():
    # a 4x4 grid over 32x32 px; box of 8 px at (row, col) = (4, 4) spans px 4..11: cells (0|1, 0|1)
    frame, row, col = np.zeros(5, dtype=int), np.full(5, 4), np.full(5, 4)
    att = _attention(1, [(0, 0, 0), (0, 1, 1), (0, 0, 1), (0, 2, 0), (0, 1, 2)])
    assert ev.pointing_score(att, frame, row, col, FRAME, box=8) == 0.6  # (0,0), (1,1), (0,1) overlap
    assert ev.pointing_score(att, frame, row, col, FRAME, box=4) == 0.2  # px 4..7: cell (0, 0) only
