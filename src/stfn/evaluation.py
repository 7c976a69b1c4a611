"""Evaluation: metrics, per-class table, plots (confusion matrix, training curves, predicted vs
actual, attention overlays), and the comparison of two metric values by their direction."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

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
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """accuracy, macro-F1, NLL, per-class precision/recall/F1/support, confusion matrix."""
    k = len(class_names)
    pred = probs.argmax(-1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())
    return {
        "metrics": {
            "accuracy": float((pred == labels).mean()),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "nll": nll,
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
        "confusion_matrix": cm.tolist(),
    }


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (equal-width confidence bins), Brier score, and the
    reliability table (per bin: mean confidence, accuracy, count)."""
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
    onehot = np.eye(probs.shape[1])[labels]
    return {"ece": float(ece), "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()), "reliability": table}


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
    err = pred - y
    ss_res = float((err**2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "metrics": {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        }
    }


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much better `challenger` is than `champion` (positive = better), by the metric's direction."""
    if metric not in HIGHER_IS_BETTER:
        raise KeyError(f"metric '{metric}' has no declared direction; known: {sorted(HIGHER_IS_BETTER)}")
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def is_better(metric: str, challenger: float, champion: float, min_improvement: float = 0.0) -> bool:
    """Does `challenger` strictly beat `champion` on `metric`, by at least `min_improvement`?"""
    gain = improvement(metric, challenger, champion)
    return gain > 0 and gain >= min_improvement


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend; each returns the written path)
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: list[list[int]], class_names: list[str], path: Path) -> Path:
    plt = _plt()
    m = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(6, 5.4))
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test; colour = row share)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(history: list[dict[str, float]], path: Path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    metric_keys = [k for k in history[0] if k.startswith("val_") and k != "val_loss"] if history else []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    axes[0].set_title("loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    for k in metric_keys:
        axes[1].plot(epochs, [h[k] for h in history], marker="o", label=k)
    axes[1].set_title("validation metric")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(table: list[dict[str, Any]], ece: float, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="perfectly calibrated")
    mids = [(r["lo"] + r["hi"]) / 2 for r in table]
    ax.bar(mids, [r["accuracy"] for r in table], width=1 / 15, alpha=0.7, edgecolor="k", label="accuracy")
    ax.plot(
        [r["confidence"] for r in table],
        [r["accuracy"] for r in table],
        "o",
        color="C3",
        label="(confidence, accuracy)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (test), ECE = {ece:.3f}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ablation(models: dict[str, dict[str, Any]], metric: str, path: Path) -> Path:
    """Bar chart of each model's mean test metric over seeds, with the std as error bars."""
    plt = _plt()
    names = list(models)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    means = [models[n]["mean"] for n in names]
    ax.bar(
        names,
        means,
        yerr=[models[n]["std"] for n in names],
        capsize=6,
        color=["C3" if n == "stfn" else "C0" for n in names],
    )
    for i, n in enumerate(names):
        ax.scatter([i] * len(models[n]["seeds"]), models[n]["seeds"], color="k", s=10, zorder=3)
        ax.text(i, means[i], f"{means[i]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Ablation: mean ± std over {len(models[names[0]]['seeds'])} seeds (dots: seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predicted_vs_actual(y: np.ndarray, pred: np.ndarray, unit: str | None, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, pred, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1)
    ax.set_xlabel(f"actual ({unit or ''})")
    ax.set_ylabel(f"predicted ({unit or ''})")
    ax.set_title("Predicted vs actual (test)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_samples(
    frames: np.ndarray, series: np.ndarray, frame_steps: list[int], channels: list[str], titles: list[str], path: Path
) -> Path:
    """A few input samples: the frames in a row and, below, the series with the frames' steps
    marked. frames (S, F, C, H, W), series (S, T, C_s)."""
    plt = _plt()
    s, f = frames.shape[:2]
    fig = plt.figure(figsize=(max(1.3 * f, 6.5), 2.9 * s))
    grid = fig.add_gridspec(2 * s, f, height_ratios=[1, 1.1] * s)
    for i in range(s):
        for k in range(f):
            ax = fig.add_subplot(grid[2 * i, k])
            ax.imshow(frames[i, k].mean(axis=0), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"step {frame_steps[k]}", fontsize=7)
        ax = fig.add_subplot(grid[2 * i + 1, :])
        for c, name in enumerate(channels):
            ax.plot(series[i, :, c], lw=1, label=name)
        for st in frame_steps:
            ax.axvline(st, color="grey", lw=0.5, ls=":")
        ax.set_title(titles[i], fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6, ncol=min(len(channels), 6), loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_attention(frames: np.ndarray, attention: np.ndarray, titles: list[str], path: Path) -> Path:
    """Attention maps overlaid on the frames: frames (S, F, C, H, W), attention (S, F, h, w)."""
    plt = _plt()
    s, f = frames.shape[:2]
    fig, axes = plt.subplots(s, f, figsize=(1.4 * f, 1.5 * s), squeeze=False)
    vmax = float(attention.max()) or 1.0
    for i in range(s):
        for k in range(f):
            ax = axes[i, k]
            img = frames[i, k].mean(axis=0)
            ax.imshow(img, cmap="gray")
            h, w = img.shape
            ax.imshow(
                attention[i, k],
                cmap="inferno",
                alpha=0.55,
                vmin=0,
                vmax=vmax,
                extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(titles[i], fontsize=7)
            if i == 0:
                ax.set_title(f"frame {k}", fontsize=7)
    fig.suptitle("Attention over space-time (brighter = more weight)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
