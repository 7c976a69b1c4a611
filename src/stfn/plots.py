"""Plots of an evaluation (matplotlib, Agg backend; each function returns the written path):
confusion matrix, training curves, reliability diagram, ablation bars, predicted vs actual,
input samples and attention overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    """pyplot on the Agg backend (set before pyplot is first imported; lazy for that reason)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    plt = _plt()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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


def plot_ablation(encoders: dict[str, dict[str, dict[str, Any]]], metric: str, path: Path) -> Path:
    """Bar chart of each model's mean test metric over seeds, with the std as error bars and the
    seeds as dots; one group of bars per spatial encoder ({encoder: {model: {mean, std, seeds}}})."""
    plt = _plt()
    names = list(dict.fromkeys(n for models in encoders.values() for n in models))
    width = 0.8 / len(encoders)
    fig, ax = plt.subplots(figsize=(6 + 1.5 * (len(encoders) - 1), 3.8))
    for k, (encoder, models) in enumerate(encoders.items()):
        xs = [i + (k - (len(encoders) - 1) / 2) * width for i, n in enumerate(names) if n in models]
        shown = [n for n in names if n in models]
        means = [models[n]["mean"] for n in shown]
        ax.bar(xs, means, width * 0.9, yerr=[models[n]["std"] for n in shown], capsize=4, color=f"C{k}", label=encoder)
        for x, n, m in zip(xs, shown, means, strict=True):
            ax.scatter([x] * len(models[n]["seeds"]), models[n]["seeds"], color="k", s=8, zorder=3)
            ax.text(x, m, f"{m:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"test {metric}")
    seeds = {len(m["seeds"]) for models in encoders.values() for m in models.values()}
    ax.set_title(f"Ablation: mean ± std over {'/'.join(map(str, sorted(seeds)))} seeds (dots: seeds)")
    ax.legend(title="spatial encoder", fontsize=8)
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


def plot_monitoring(
    reference: dict[str, Any], values: dict[str, np.ndarray], checks: list[dict[str, Any]], path: Path
) -> Path:
    """A panel per distribution check: the batch's per-sample `values` (summaries, predictions,
    labels) over the reference's (histograms on common bins; class shares as bars), titled with
    the test's result, in red where it crossed its threshold."""
    plt = _plt()
    shown = [c for c in checks if c["test"] in ("ks_2samp", "chi2_contingency")]
    cols = 4
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel()[len(shown) :]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), shown, strict=False):
        name = c["name"]
        if c["test"] == "chi2_contingency":
            k = len(reference.get("classes", []))
            ref_counts = np.asarray(reference[name]["counts"], np.float64)
            got = values.get(name)
            x = np.arange(k)
            ax.bar(x - 0.2, ref_counts / max(ref_counts.sum(), 1), 0.4, label="reference", color="#9aa5b1")
            if got is not None and len(got):
                counts = np.bincount(np.asarray(got, np.int64), minlength=k)
                ax.bar(
                    x + 0.2, counts / counts.sum(), 0.4, label="batch", color="#d62728" if c["crossed"] else "#1f77b4"
                )
            ax.set_xticks(x, reference.get("classes", []), fontsize=7)
            effect = f"TVD {c['statistic']:.2f}"
        else:
            ref = np.asarray(
                reference["summaries"][name] if name in reference["summaries"] else reference[name]["values"]
            )
            got = np.asarray(values[name], np.float64)
            ref, got = ref[np.isfinite(ref)], got[np.isfinite(got)]
            lo, hi = np.nanmin(np.r_[ref, got]), np.nanmax(np.r_[ref, got])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
            ax.hist(ref, bins, density=True, alpha=0.6, label="reference", color="#9aa5b1")
            ax.hist(got, bins, density=True, alpha=0.6, label="batch", color="#d62728" if c["crossed"] else "#1f77b4")
            effect = f"KS {c['statistic']:.2f}"
        ax.set_title(
            f"{name}\n{effect}, p={c['p_value']:.1g}", fontsize=8, color="#d62728" if c["crossed"] else "black"
        )
        ax.tick_params(labelsize=7)
    if shown:
        axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("batch (blue; red: crossed) against the champion's reference (grey)", fontsize=10)
    return _save(fig, path, dpi=90)
