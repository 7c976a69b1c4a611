"""Evaluation metrics, thin over scikit-learn and SciPy, and each metric's direction (which the
promotion gate reads). Plots live in `stfn.plots`.

Definitions, where libraries differ: macro-F1 averages over the classes present in the labels
(scikit-learn's `f1_score(labels=<present>, average="macro")`: a class absent from a test split
has no recall to average); NLL is scikit-learn's `log_loss` over every class (probabilities
clipped at the float type's epsilon); Brier is the multi-class score (the sum over classes of the
squared error, averaged over samples: `brier_score_loss` with every class as a label); R² is
`r2_score` (1.0 for a perfect fit of a constant target, 0.0 for an imperfect one).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import softmax as _softmax
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_recall_fscore_support,
    r2_score,
    root_mean_squared_error,
)

log = logging.getLogger(__name__)

# Each metric's direction, declared once; the promotion gate reads it.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "r2": True,
    "pointing": True,
    "mae": False,
    "rmse": False,
    "nll": False,
    "ece": False,
    "brier": False,
}
PRIMARY_METRIC = {"classification": "accuracy", "regression": "mae"}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, over the last axis (SciPy's softmax)."""
    return _softmax(np.asarray(logits, np.float64), axis=-1).astype(np.asarray(logits).dtype)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """accuracy, macro-F1, NLL, per-class precision/recall/F1/support, confusion matrix."""
    k = len(class_names)
    every = np.arange(k)
    labels = np.asarray(labels, np.int64)
    pred = probs.argmax(-1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=every, zero_division=0.0)
    present = np.unique(labels)
    return {
        "metrics": {
            "accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, labels=present, average="macro", zero_division=0.0))
            if len(present)
            else 0.0,
            "nll": float(log_loss(labels, probs, labels=every)),
        },
        "per_class": [
            {
                "class": class_names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
        "confusion_matrix": confusion_matrix(labels, pred, labels=every).tolist(),
    }


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (equal-width confidence bins), Brier score, and the
    reliability table (per bin: mean confidence, accuracy, count). ECE and its table are
    written here: scikit-learn's `calibration_curve` is binary and returns no bin counts."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            gap = abs(conf[m].mean() - correct[m].mean())
            ece += m.mean() * gap
            table.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "confidence": float(conf[m].mean()),
                    "accuracy": float(correct[m].mean()),
                    "count": int(m.sum()),
                }
            )
    brier = brier_score_loss(labels, probs, labels=np.arange(probs.shape[1]))
    return {"ece": float(ece), "brier": float(brier), "reliability": table}


def pointing_score(
    attention: np.ndarray,
    frame: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    frame_size: tuple[int, int],
    box: int = 8,
    tubelet: int = 1,
) -> float:
    """Share of samples whose highest-attention (frame, cell) is at the trigger frame and whose
    cell overlaps the trigger digit's box. attention (S, F/tubelet, h, w); row/col: the box's
    top-left px; with tubelets, attention step k covers frames [k*tubelet, (k+1)*tubelet)."""
    s, f, gh, gw = attention.shape
    flat = attention.reshape(s, -1).argmax(axis=1)
    k, cell = np.divmod(flat, gh * gw)
    ci, cj = np.divmod(cell, gw)
    ch, cw = frame_size[0] / gh, frame_size[1] / gw
    overlap_r = (ci * ch < row + box) & (row < (ci + 1) * ch)
    overlap_c = (cj * cw < col + box) & (col < (cj + 1) * cw)
    return float(((k == frame // tubelet) & overlap_r & overlap_c).mean())


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    return {
        "metrics": {
            "mae": float(mean_absolute_error(y, pred)),
            "rmse": float(root_mean_squared_error(y, pred)),
            "r2": float(r2_score(y, pred)) if len(y) > 1 else 0.0,
        }
    }


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much better `challenger` is than `champion` (positive = better), by the metric's direction."""
    if metric not in HIGHER_IS_BETTER:
        raise KeyError(f"metric '{metric}' has no declared direction; known: {sorted(HIGHER_IS_BETTER)}")
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def versus_baselines(test: dict[str, float], baselines: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """STFN's test `metric` against the best baseline's on the same rows, and a plain sentence
    saying which wins (the run summary prints it; a tie counts for STFN)."""
    scored = {n: float(b["test"][metric]) for n, b in baselines.items() if np.isfinite(b["test"].get(metric, np.nan))}
    if not scored:
        return {}
    best = max(scored, key=lambda n: improvement(metric, scored[n], 0.0))
    ours, theirs = float(test[metric]), scored[best]
    gain = improvement(metric, ours, theirs)
    wins = gain >= 0
    pct = abs(gain) / max(abs(theirs), 1e-12) * 100
    if wins:
        text = f"STFN beats every baseline: test {metric} {ours:.4g} vs the best, {best}, {theirs:.4g}"
        text += f" ({pct:.1f} % better)"
    else:
        text = (
            f"the {best} baseline wins: test {metric} {theirs:.4g} vs STFN's {ours:.4g} ({pct:.1f} % better); "
            f"on this dataset use {best}, or give the model more data or epochs"
        )
    return {"metric": metric, "best_baseline": best, "baseline": theirs, "stfn": ours, "stfn_wins": wins, "text": text}


BOOTSTRAP_REPS = 4000


def paired_block_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Any]:
    """The mean of `a - b` over time-ordered rows (e.g. two models' absolute errors on the same
    test rows), its 95 % percentile interval and the one-sided p-value of "the mean is not below
    0" (the share of resampled means >= 0), from arch's circular block bootstrap with the block
    length of Politis and White's rule (arch's `optimal_block_length`): overlapping windows make
    neighbouring rows dependent, and resampling rows one by one would understate the noise."""
    from arch.bootstrap import CircularBlockBootstrap, optimal_block_length  # lazy: statsmodels is slow to import

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    block = int(np.ceil(max(1.0, float(optimal_block_length(d)["circular"].iloc[0]))))
    means = CircularBlockBootstrap(block, d, seed=seed).apply(lambda x: np.array([x.mean()]), reps=reps)[:, 0]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "mean_difference": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "p_not_below_zero": float((means >= 0).mean()),
        "block_length": block,
        "rows": len(d),
        "test": f"circular block bootstrap (arch), block {block} rows, {reps} resamples",
    }
