"""Watching the champion: reference statistics of a model's training data, saved with the
model when it is evaluated, and a new batch compared with them.

The unit of every distribution test is the sample (a video and its series window), so the
samples of a batch are independent draws and the tests' p-values mean what they say. Each sample
is reduced to a few numbers (`sample_summaries`): per series channel its mean, spread and share of
missing readings over the window; per frame channel its mean intensity, spread and share of
saturated pixels. The reference keeps those numbers for a random subset of the training samples
(`monitor.reference_samples`), the batch-level figures of the whole training split (each channel's
mean, spread, missing share and range), the champion's predictions on the validation split and the
training labels' distribution.

`compare` runs, for a batch:
- a two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) per summary against the reference's;
- a chi-square test of the 2 x K table of class counts, reference and batch (scipy.stats.
  chi2_contingency), for the predicted classes (and, with labels, the labels); for regression, KS
  on the predicted values (and labels);
- each series channel's missing share and share of readings outside the training range;
- with labels, the champion's primary metric against the one recorded on its test set (for
  accuracy with a one-sided binomial test, scipy.stats.binomtest).
A distribution test alarms when its p-value is below `monitor.alpha` divided by the number of
distribution tests run (Bonferroni: the chance that a batch from the training distribution sets
off any of them stays below alpha) and its effect (KS statistic, total variation distance) is at
least the configured minimum, so a large batch does not alarm on a shift too small to matter.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from stfn.evaluation import HIGHER_IS_BETTER

FORMAT = 1
SATURATED_UINT8 = 255


# ---------------------------------------------------------------------------------------------
# Summaries of samples
# ---------------------------------------------------------------------------------------------


def sample_summaries(
    series: np.ndarray | None, frames: np.ndarray | None, channels: list[str], saturation: float
) -> dict[str, np.ndarray]:
    """Per-sample numbers of raw inputs: series (N, T, C) with NaN for missing, frames
    (N, F, C, H, W). Keys `series.<channel>.{mean,std,missing}` and `frames.<c>.{mean,std,saturated}`."""
    out: dict[str, np.ndarray] = {}
    if series is not None:
        s = np.asarray(series, np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing window has no mean
            mean, std = np.nanmean(s, axis=1), np.nanstd(s, axis=1)
        missing = np.isnan(s).mean(axis=1)
        for k, name in enumerate(channels):
            out[f"series.{name}.mean"] = mean[:, k]
            out[f"series.{name}.std"] = std[:, k]
            out[f"series.{name}.missing"] = missing[:, k]
    if frames is not None:
        f = np.asarray(frames)
        for c in range(f.shape[2]):
            x = f[:, :, c].reshape(len(f), -1)
            out[f"frames.{c}.mean"] = x.mean(axis=1, dtype=np.float64)
            out[f"frames.{c}.std"] = x.std(axis=1, dtype=np.float64)
            out[f"frames.{c}.saturated"] = (x >= saturation).mean(axis=1)
    return out


def series_aggregates(series: np.ndarray, channels: list[str], lo_hi: dict | None = None) -> dict[str, dict]:
    """Per channel over every reading: mean, std, missing share and, against `lo_hi`
    ({channel: (min, max)}, the training range), the share of readings outside it."""
    s = np.asarray(series, np.float64)
    out = {}
    for k, name in enumerate(channels):
        x = s[:, :, k].ravel()
        seen = x[~np.isnan(x)]
        row = {
            "mean": float(seen.mean()) if seen.size else math.nan,
            "std": float(seen.std()) if seen.size else math.nan,
            "missing": float(1 - seen.size / max(x.size, 1)),
            "min": float(seen.min()) if seen.size else math.nan,
            "max": float(seen.max()) if seen.size else math.nan,
        }
        if lo_hi is not None and seen.size:
            lo, hi = lo_hi[name]
            row["out_of_range"] = float(((seen < lo) | (seen > hi)).mean())
        out[name] = row
    return out


def frames_aggregates(frames: np.ndarray, saturation: float, chunk: int = 512) -> dict[str, dict]:
    """Per frame channel over every pixel: mean, std and saturated share (in chunks of samples)."""
    n, c = len(frames), frames.shape[2]
    total, sq, sat, count = np.zeros(c), np.zeros(c), np.zeros(c), 0
    for i in range(0, n, chunk):
        x = np.asarray(frames[i : i + chunk], np.float64)  # (n, F, C, H, W)
        total += x.sum(axis=(0, 1, 3, 4))
        sq += (x * x).sum(axis=(0, 1, 3, 4))
        sat += (x >= saturation).sum(axis=(0, 1, 3, 4))
        count += x.shape[0] * x.shape[1] * x.shape[3] * x.shape[4]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(sq / max(count, 1) - mean**2, 0))
    return {
        str(k): {"mean": float(mean[k]), "std": float(std[k]), "saturated": float(sat[k] / max(count, 1))}
        for k in range(c)
    }


def saturation_level(dtype: str, frames_max: float) -> float:
    """The value a saturated pixel holds: 255 for uint8 frames, else the training maximum."""
    return float(SATURATED_UINT8) if np.dtype(dtype) == np.uint8 else float(frames_max)


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


def build_reference(
    *,
    dataset: str,
    task: str,
    channels: list[str],
    frames_dtype: str,
    classes: list[str],
    train_series: np.ndarray,
    train_frames: np.ndarray,
    train_labels: np.ndarray,
    val_predictions: np.ndarray,
    metric: str,
    test_metric: float,
    n_summaries: int,
    seed: int,
    val_series: np.ndarray | None = None,
    val_frames: np.ndarray | None = None,
) -> dict[str, Any]:
    """The reference statistics of a model: the whole training split's aggregates, the per-sample
    summaries of a random subset of `n_summaries` training samples, the model's predictions on
    the validation split (class counts or values) and the training labels' distribution. With the
    validation split's raw inputs, also how far unseen data drawn like the training data lies
    from it (`unseen`: each summary's KS statistic, validation split against the reference), the
    calibration `compare` adds to every summary's threshold."""
    n = len(train_series)
    frames_max = float(np.max(train_frames[: min(n, 2048)])) if np.dtype(frames_dtype) != np.uint8 else 255.0
    level = saturation_level(frames_dtype, frames_max)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, n_summaries), replace=False))
    summaries = sample_summaries(train_series[pick], np.asarray(train_frames[pick]), channels, level)
    ref: dict[str, Any] = {
        "format": FORMAT,
        "dataset": dataset,
        "task": task,
        "channels": channels,
        "frames_dtype": frames_dtype,
        "saturation": level,
        "n_train": int(n),
        "series": series_aggregates(train_series, channels),
        "frames": frames_aggregates(train_frames, level),
        "summaries": {k: _rounded(v) for k, v in summaries.items()},
        "metric": {"name": metric, "test": float(test_metric)},
    }
    if task == "classification":
        k = len(classes)
        ref["classes"] = classes
        ref["predictions"] = {"counts": np.bincount(val_predictions.argmax(axis=1), minlength=k).tolist()}
        ref["labels"] = {"counts": np.bincount(train_labels.astype(np.int64), minlength=k).tolist()}
    else:
        ref["predictions"] = {"values": _rounded(val_predictions[: max(n_summaries, 1)])}
        ref["labels"] = {"values": _rounded(train_labels[pick])}
    if val_series is not None and len(val_series) > 1:
        ref["unseen"] = unseen_distance(ref, val_series, val_frames, n_summaries, seed)
    return ref


def unseen_distance(
    ref: dict[str, Any], series: np.ndarray, frames: np.ndarray | None, n_summaries: int, seed: int
) -> dict[str, Any]:
    """Each summary's KS statistic between unseen data (the validation split: samples the model
    never trained on, drawn like its training data) and the reference's training summaries: how
    far in-distribution data a model has not seen already lies from what it was trained on (new
    writers, new days, new stations). Measured once, saved with the reference."""
    n = len(series)
    pick = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, n_summaries), replace=False))
    got = sample_summaries(series[pick], None if frames is None else np.asarray(frames[pick]),
                           ref["channels"], ref["saturation"])  # fmt: skip
    ks = {}
    for key, values in got.items():
        r, v = np.asarray(ref["summaries"][key], np.float64), np.asarray(values, np.float64)
        r, v = r[np.isfinite(r)], v[np.isfinite(v)]
        if len(r) > 1 and len(v) > 1:
            ks[key] = round(float(st.ks_2samp(r, v).statistic), 4)
    return {"split": "val", "n": int(len(pick)), "ks": ks}


def channel_unseen(reference: dict[str, Any]) -> dict[str, float]:
    """The calibration per input (a series channel, a frame channel): the largest of its summaries'
    distances in `reference["unseen"]`. New writers, days or stations move an input's summaries
    together (more ink: a higher mean, spread and saturated share), and each summary's distance
    is one noisy draw of that move: the largest is the steadier estimate. Empty for references
    logged before the calibration (their thresholds stay `min_ks`)."""
    out: dict[str, float] = {}
    for key, d in ((reference.get("unseen") or {}).get("ks") or {}).items():
        channel = key.rsplit(".", 1)[0]
        out[channel] = max(out.get(channel, 0.0), float(d))
    return out


def calibrated_threshold(min_ks: float, unseen: float, n_batch: int, n_ref: int, p_threshold: float) -> float:
    """The KS statistic a batch's summary must reach to alarm: as far from training as unseen
    validation data is (`unseen`), plus the distance sampling noise alone reaches with probability
    `p_threshold` between samples of `n_batch` and `n_ref` (the limiting Kolmogorov distribution,
    scipy.stats.kstwobign), and never below `min_ks`."""
    noise = float(st.kstwobign.isf(p_threshold)) * math.sqrt((n_batch + n_ref) / (n_batch * n_ref))
    return max(min_ks, unseen + noise)


def _rounded(values: np.ndarray) -> list[float]:
    """Seven significant digits: the file stays small and the tests' results do not move."""
    return [float(f"{v:.7g}") for v in np.asarray(values, np.float64)]


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One figure compared with its threshold; `crossed` sets off the alarm."""

    name: str  # e.g. series.zone-0.std, predictions, missing.zone-0, quality.accuracy
    kind: str  # drift | quality
    test: str  # what was computed (ks_2samp, chi2_contingency, share, metric, binomtest)
    statistic: float  # the effect: KS D, total variation distance, missing share increase, ...
    threshold: float  # the statistic's threshold
    # the effect reached its threshold; `compare` then also asks p < its Bonferroni threshold of a
    # check that has a p-value
    crossed: bool
    p_value: float | None = None
    p_threshold: float | None = None
    reference: float | None = None  # a figure of the reference to read the batch's against
    batch: float | None = None
    detail: str = ""


def _ks(name: str, ref: np.ndarray, got: np.ndarray, min_d: float) -> Check | None:
    ref, got = ref[np.isfinite(ref)], got[np.isfinite(got)]
    if len(ref) < 2 or len(got) < 2:
        return None
    res = st.ks_2samp(ref, got)
    return Check(
        name,
        "drift",
        "ks_2samp",
        float(res.statistic),
        min_d,
        float(res.statistic) >= min_d,
        p_value=float(res.pvalue),
        reference=float(np.median(ref)),
        batch=float(np.median(got)),
        detail="medians",
    )


def _chisquare(name: str, ref_counts: list[int], got: np.ndarray, k: int, min_tvd: float) -> Check | None:
    """Two samples of classes (the reference's counts, the batch's): scipy's chi-square test of
    the 2 x K table (chi2_contingency), so the reference's own sampling noise counts too; classes
    neither sample holds are left out (no expected count of 0)."""
    if len(got) == 0:
        return None
    counts = np.bincount(got.astype(np.int64), minlength=k)
    ref = np.asarray(ref_counts, np.int64)
    table = np.stack([ref, counts])[:, (ref + counts) > 0]
    p_value = float(st.chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    tvd = 0.5 * float(np.abs(counts / counts.sum() - ref / max(ref.sum(), 1)).sum())
    top = np.argsort(-counts)[:3]
    return Check(
        name,
        "drift",
        "chi2_contingency",
        tvd,
        min_tvd,
        tvd >= min_tvd,
        p_value=p_value,
        detail="most frequent in the batch: " + ", ".join(f"{i}: {counts[i] / counts.sum():.0%}" for i in top),
    )


def compare(
    reference: dict[str, Any],
    thresholds: Any,
    *,
    summaries: dict[str, np.ndarray],
    series_stats: dict[str, dict] | None,
    predictions: np.ndarray | None,
    labels: np.ndarray | None = None,
    metric_value: float | None = None,
) -> dict[str, Any]:
    """The batch's checks against `reference`; `thresholds`: the `monitor` section of params.
    `predictions`: class indices or values; `series_stats`: `series_aggregates` of the batch
    against the training range (None when the batch has no raw readings, e.g. an inference log)."""
    checks: list[Check] = []
    ref_sum = {k: np.asarray(v, np.float64) for k, v in reference["summaries"].items()}
    for key, got in summaries.items():
        if key in ref_sum:
            c = _ks(key, ref_sum[key], np.asarray(got, np.float64), thresholds.min_ks)
            if c is not None:
                checks.append(c)
    for name, got in (("predictions", predictions), ("labels", labels)):
        if got is None or not len(got):
            continue
        if reference["task"] == "classification":
            k = len(reference["classes"])
            c = _chisquare(name, reference[name]["counts"], got, k, thresholds.min_tvd)
        else:
            c = _ks(name, np.asarray(reference[name]["values"]), got, thresholds.min_ks)
        if c is not None:
            checks.append(c)
    if metric_value is not None:
        n = len(labels) if labels is not None else None
        checks.append(quality_check(reference["metric"], metric_value, thresholds.max_metric_drop, n))
    # Bonferroni over the tests run (distributions and, for accuracy, the binomial test)
    tests = [c for c in checks if c.p_value is not None]
    p_threshold = thresholds.alpha / max(len(tests), 1)
    unseen = channel_unseen(reference)
    for c in tests:
        c.p_threshold = p_threshold
        far = unseen.get(c.name.rsplit(".", 1)[0]) if c.name in summaries else None
        if far is not None:
            n_batch = int(np.isfinite(np.asarray(summaries[c.name], np.float64)).sum())
            n_ref = int(np.isfinite(ref_sum[c.name]).sum())
            c.threshold = calibrated_threshold(thresholds.min_ks, far, n_batch, n_ref, p_threshold)
            c.crossed = c.statistic >= c.threshold
            c.detail = f"medians; unseen validation data lies up to {far:.3f} from training on this input"
        c.crossed = bool(c.p_value < p_threshold and c.crossed)  # significant, and the effect large enough
    for name, got in (series_stats or {}).items():
        ref = reference["series"][name]
        increase = got["missing"] - ref["missing"]
        checks.append(
            Check(
                f"missing.{name}",
                "drift",
                "share",
                increase,
                thresholds.max_missing_increase,
                increase > thresholds.max_missing_increase,
                reference=ref["missing"],
                batch=got["missing"],
                detail="missing share of the readings, batch minus training",
            )
        )
        if "out_of_range" in got:
            checks.append(
                Check(
                    f"range.{name}",
                    "drift",
                    "share",
                    got["out_of_range"],
                    thresholds.max_out_of_range,
                    got["out_of_range"] > thresholds.max_out_of_range,
                    reference=0.0,
                    batch=got["out_of_range"],
                    detail=f"readings outside the training range {ref['min']:.4g}..{ref['max']:.4g}",
                )
            )
    crossed = [c for c in checks if c.crossed]
    return {
        "alarm": bool(crossed),
        "drift": any(c.kind == "drift" for c in crossed),
        "degradation": any(c.kind == "quality" for c in crossed),
        "crossed": [c.name for c in crossed],
        "n_tests": len(tests),
        "p_threshold": p_threshold,
        "checks": [asdict(c) for c in checks],
    }


def quality_check(recorded: dict[str, Any], value: float, max_drop: float, n: int | None = None) -> Check:
    """The champion's primary metric on the batch against its recorded test figure: the relative
    change in the worse direction (a drop of accuracy, a rise of MAE) above `max_drop` alarms. For
    accuracy on `n` samples, also a one-sided binomial test (scipy.stats.binomtest) of the batch's
    correct answers against the recorded accuracy, so that a small batch's bad luck does not
    alarm (`compare` holds its p-value to the Bonferroni threshold)."""
    name, ref = recorded["name"], float(recorded["test"])
    worse = (ref - value) if HIGHER_IS_BETTER[name] else (value - ref)
    relative = worse / abs(ref) if ref else worse
    p_value = None
    if name == "accuracy" and n:
        rate = min(max(ref, 1e-9), 1 - 1e-9)
        p_value = float(st.binomtest(int(round(value * n)), n, rate, alternative="less").pvalue)
    return Check(
        f"quality.{name}",
        "quality",
        "binomtest" if p_value is not None else "metric",
        relative,
        max_drop,
        relative > max_drop,
        p_value=p_value,
        reference=ref,
        batch=float(value),
        detail=f"{name} on the batch against the champion's test {name} (relative change for the worse)",
    )


def describe(check: dict[str, Any]) -> str:
    """One line naming what crossed, by how much, against which threshold."""
    c = check
    if c["test"] in ("ks_2samp", "chi2_contingency"):
        effect = "KS statistic" if c["test"] == "ks_2samp" else "total variation distance"
        where = ""
        if c.get("reference") is not None and c.get("batch") is not None:
            where = f"; median {c['reference']:.4g} in training, {c['batch']:.4g} in the batch"
        elif c.get("detail"):
            where = f"; {c['detail']}"
        return (
            f"{c['name']}: {effect} {c['statistic']:.3f} (threshold {c['threshold']:.3g}), "
            f"p = {c['p_value']:.2g} (threshold {c['p_threshold']:.2g}){where}"
        )
    if c["test"] in ("metric", "binomtest"):
        p = f", p = {c['p_value']:.2g} (threshold {c['p_threshold']:.2g})" if c.get("p_value") is not None else ""
        return (
            f"{c['name']}: {c['batch']:.4f} on the batch against {c['reference']:.4f} on the test set, "
            f"{c['statistic']:.1%} worse (threshold {c['threshold']:.0%}){p}"
        )
    return (
        f"{c['name']}: {c['batch']:.3f} in the batch against {c['reference']:.3f} in training "
        f"({c['detail']}; threshold {c['threshold']:g})"
    )
