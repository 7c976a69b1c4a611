"""stfn.monitoring: the per-sample summaries, the reference and the checks, against numpy and
scipy computed directly; false alarms on batches of the reference's own distribution stay under
alpha; each kind of shift alarms on the check that names it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stfn import monitoring
from stfn.config import MonitorParams

CHANNELS = ["a", "b"]


def draw(rng, n, gain=1.0, offset=0.0, missing=0.0, brightness=1.0, classes=None):
    series = rng.normal(0, 1, size=(n, 16, 2)) + rng.uniform(-2, 2, size=(n, 1, 2))
    series[:, :, 0] = series[:, :, 0] * gain + offset
    series[rng.random(series.shape) < 0.002] = np.nan
    if missing:
        series[:, :, 1][rng.random((n, 16)) < missing] = np.nan
    frames = (rng.random((n, 4, 1, 8, 8)) < 0.2) * rng.integers(100, 256, size=(n, 4, 1, 8, 8))
    frames = np.clip(frames * brightness, 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, n) if classes is None else rng.choice(classes, n)
    return series, frames, labels


def reference(rng, n=3000):
    series, frames, labels = draw(rng, n)
    val = np.eye(10)[rng.integers(0, 10, 1500)]  # the "model's" validation predictions (one-hot)
    return monitoring.build_reference(
        dataset="d", task="classification", channels=CHANNELS, frames_dtype="uint8",
        classes=[str(i) for i in range(10)], train_series=series, train_frames=frames, train_labels=labels,
        val_predictions=val, metric="accuracy", test_metric=0.9, n_summaries=2000, seed=0,
    )  # fmt: skip


def check(ref, series, frames, labels, predictions=None, metric=None, **thresholds):
    lo_hi = {c: (ref["series"][c]["min"], ref["series"][c]["max"]) for c in CHANNELS}
    return monitoring.compare(
        ref,
        MonitorParams(**thresholds),
        summaries=monitoring.sample_summaries(series, frames, CHANNELS, ref["saturation"]),
        series_stats=monitoring.series_aggregates(series, CHANNELS, lo_hi),
        predictions=labels if predictions is None else predictions,
        labels=labels,
        metric_value=metric,
    )


def test_summaries_are_the_per_sample_numbers():
    rng = np.random.default_rng(1)
    series, frames, _ = draw(rng, 50)
    s = monitoring.sample_summaries(series, frames, CHANNELS, 255)
    b = series[:, :, 1]
    assert np.allclose(s["series.b.mean"], [np.mean(r[~np.isnan(r)]) for r in b])
    assert np.allclose(s["series.b.std"], [np.std(r[~np.isnan(r)]) for r in b])
    assert np.allclose(s["series.b.missing"], np.isnan(b).mean(axis=1))
    assert np.allclose(s["frames.0.mean"], frames.reshape(50, -1).mean(axis=1))
    assert np.allclose(s["frames.0.saturated"], (frames.reshape(50, -1) == 255).mean(axis=1))
    agg = monitoring.frames_aggregates(frames, 255, chunk=7)  # chunked sums = the whole array's
    assert agg["0"]["mean"] == pytest.approx(frames.mean()) and agg["0"]["std"] == pytest.approx(frames.std())


def test_the_tests_are_scipys_and_bonferroni_divides_alpha():
    rng = np.random.default_rng(2)
    ref = reference(rng)
    series, frames, labels = draw(rng, 500, gain=1.5)
    out = check(ref, series, frames, labels)
    by = {c["name"]: c for c in out["checks"]}
    got = monitoring.sample_summaries(series, frames, CHANNELS, 255)["series.a.std"]
    expected = stats.ks_2samp(np.asarray(ref["summaries"]["series.a.std"]), got)
    assert by["series.a.std"]["statistic"] == pytest.approx(expected.statistic, rel=1e-6)
    assert by["series.a.std"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-4)
    counts = np.bincount(labels, minlength=10)
    table = np.stack([np.asarray(ref["labels"]["counts"]), counts])
    assert by["labels"]["p_value"] == pytest.approx(stats.chi2_contingency(table).pvalue, rel=1e-9)
    shares = np.asarray(ref["labels"]["counts"]) / sum(ref["labels"]["counts"])
    assert by["labels"]["statistic"] == pytest.approx(0.5 * np.abs(counts / 500 - shares).sum())
    assert out["n_tests"] == 2 * 3 + 3 + 2 and out["p_threshold"] == pytest.approx(0.01 / out["n_tests"])
    assert check(ref, series, frames, labels, metric=0.9)["n_tests"] == out["n_tests"] + 1  # the binomial test
    assert "series.a.std" in out["crossed"] and out["drift"] and not out["degradation"]
    line = monitoring.describe(by["series.a.std"])
    assert line.startswith("series.a.std: KS statistic") and "threshold 0.1" in line and "median" in line


def test_false_alarms_on_batches_of_the_training_distribution_stay_under_alpha():
    rng = np.random.default_rng(3)
    ref = reference(rng)
    alarms = [check(ref, *draw(rng, 500), alpha=0.05)["alarm"] for _ in range(60)]
    assert sum(alarms) <= 6  # alpha 0.05 family-wise: 3 expected at most; binomial 99.7 % bound 6


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        ({"gain": 1.5}, "series.a.std"),
        ({"offset": 1.5}, "series.a.mean"),
        ({"missing": 0.3}, "missing.b"),
        ({"brightness": 0.7}, "frames.0.mean"),
        ({"classes": [1, 4, 7]}, "labels"),
    ],
)
def test_each_shift_alarms_on_the_check_that_names_it(shift, expected):
    rng = np.random.default_rng(4)
    ref = reference(rng)
    out = check(ref, *draw(rng, 500, **shift))
    assert expected in out["crossed"], out["crossed"]


def test_quality_is_judged_in_the_metrics_direction():
    worse = monitoring.quality_check({"name": "accuracy", "test": 0.96}, 0.90, 0.05)
    assert worse.crossed and worse.statistic == pytest.approx(0.0625)
    assert not monitoring.quality_check({"name": "accuracy", "test": 0.96}, 0.94, 0.05).crossed
    mae = monitoring.quality_check({"name": "mae", "test": 2.0}, 2.2, 0.05)  # lower is better: a rise is worse
    assert mae.crossed and mae.statistic == pytest.approx(0.1)
    assert not monitoring.quality_check({"name": "mae", "test": 2.0}, 1.5, 0.05).crossed
    # accuracy on n samples: scipy's one-sided binomial test beside the effect
    c = monitoring.quality_check({"name": "accuracy", "test": 0.97}, 0.92, 0.05, n=100)
    assert c.p_value == pytest.approx(stats.binomtest(92, 100, 0.97, alternative="less").pvalue)


def test_a_small_batchs_bad_luck_is_not_a_degradation():
    """92 right of 100 against a recorded 0.97 is 5.2 % worse, but p = 0.011 (scipy's binomtest,
    one-sided), far above alpha / the tests: no alarm; 460 of 500 (p < 1e-6) alarms."""
    rng = np.random.default_rng(6)
    ref = reference(rng)
    series, frames, labels = draw(rng, 100)
    ref["metric"]["test"] = 0.97
    assert "quality.accuracy" not in check(ref, series, frames, labels, metric=0.92)["crossed"]
    series, frames, labels = draw(rng, 500)
    assert "quality.accuracy" in check(ref, series, frames, labels, metric=0.92)["crossed"]


def test_a_reference_from_another_channel_layout_is_not_silently_compared():
    rng = np.random.default_rng(5)
    ref = reference(rng)
    series, frames, labels = draw(rng, 100)
    summaries = monitoring.sample_summaries(series, frames, ["x", "y"], 255)
    out = monitoring.compare(ref, MonitorParams(), summaries=summaries, series_stats=None, predictions=None)
    assert {c["name"] for c in out["checks"]} == {"frames.0.mean", "frames.0.std", "frames.0.saturated"}


def writers_draw(rng, n, writers, brightness=1.0, offset=0.0):
    """Samples written by a pool of writers, each with an ink density of their own: a new pool
    (unseen handwriting) moves the frames' summaries as a whole, the way the built-in dataset's
    disjoint digit pools do."""
    series = rng.normal(0, 1, size=(n, 16, 2)) + rng.uniform(-2, 2, size=(n, 1, 2))
    series[:, :, 0] += offset
    ink = writers[rng.integers(0, len(writers), n)][:, None, None, None, None]
    frames = (rng.random((n, 4, 1, 8, 8)) < ink) * rng.integers(100, 256, size=(n, 4, 1, 8, 8))
    return series, np.clip(frames * brightness, 0, 255).astype(np.uint8)


def pooled_references(seed: int):
    """References of one training set (200 writers), with and without the calibration measured
    on a validation split of 30 writers of its own; the validation writers."""
    rng = np.random.default_rng(seed)
    series, frames = writers_draw(rng, 3000, rng.uniform(0.1, 0.3, 200))
    val_writers = rng.uniform(0.1, 0.3, 30)
    kw = dict(
        dataset="d", task="classification", channels=CHANNELS, frames_dtype="uint8",
        classes=[str(i) for i in range(10)], train_series=series, train_frames=frames,
        train_labels=rng.integers(0, 10, 3000), val_predictions=np.eye(10)[rng.integers(0, 10, 1500)],
        metric="accuracy", test_metric=0.9, n_summaries=2000, seed=0,
    )  # fmt: skip
    val_series, val_frames = writers_draw(rng, 1500, val_writers)
    return rng, monitoring.build_reference(**kw, val_series=val_series, val_frames=val_frames), \
        monitoring.build_reference(**kw), val_writers  # fmt: skip


def alarm(ref, series, frames) -> bool:
    summaries = monitoring.sample_summaries(series, frames, CHANNELS, 255)
    return monitoring.compare(ref, MonitorParams(), summaries=summaries, series_stats=None, predictions=None)["alarm"]


def test_unseen_data_like_the_validation_split_does_not_alarm_and_shifts_still_do():
    """The validation writers' ink lies 0.18 (KS) from training's: new batches of theirs alarmed
    on 30 of 30 against the uncalibrated thresholds (min_ks alone), none against the calibrated
    ones; a darker camera or a sensor offset on the same writers still alarms every time."""
    rng, calibrated, plain, val_writers = pooled_references(4)
    assert calibrated["unseen"]["split"] == "val" and calibrated["unseen"]["n"] == 1500
    assert calibrated["unseen"]["ks"]["frames.0.mean"] > 0.15 and "unseen" not in plain
    batches = [writers_draw(rng, 500, val_writers) for _ in range(30)]
    assert sum(alarm(plain, *b) for b in batches) >= 25  # what the monitor did before its calibration
    assert sum(alarm(calibrated, *b) for b in batches) == 0
    assert all(alarm(calibrated, *writers_draw(rng, 500, val_writers, brightness=0.7)) for _ in range(10))
    assert all(alarm(calibrated, *writers_draw(rng, 500, val_writers, offset=1.0)) for _ in range(10))


def test_the_calibrated_threshold_is_unseen_distance_plus_kolmogorov_noise():
    p = 0.01 / 15
    expected = 0.07 + stats.kstwobign.isf(p) * np.sqrt((500 + 2000) / (500 * 2000))
    assert monitoring.calibrated_threshold(0.1, 0.07, 500, 2000, p) == pytest.approx(expected)
    assert monitoring.calibrated_threshold(0.5, 0.07, 500, 2000, p) == 0.5  # never below min_ks
    # the noise term is the KS statistic that sampling alone exceeds with probability p: at p = 0.05,
    # 5 % of 600 pairs of samples of one distribution (a binomial 99.9 % band: 2 % to 9 %)
    rng = np.random.default_rng(0)
    bar = monitoring.calibrated_threshold(0.0, 0.0, 500, 2000, 0.05)
    over = [stats.ks_2samp(rng.normal(size=500), rng.normal(size=2000)).statistic >= bar for _ in range(600)]
    assert 0.02 <= np.mean(over) <= 0.09
    # an input's summaries share the largest of their distances
    ref = {"unseen": {"ks": {"frames.0.mean": 0.03, "frames.0.std": 0.07, "series.a.mean": 0.02}}}
    assert monitoring.channel_unseen(ref) == {"frames.0": 0.07, "series.a": 0.02}


def test_a_reference_logged_before_the_calibration_keeps_min_ks():
    rng, _, plain, val_writers = pooled_references(4)
    out = monitoring.compare(
        plain, MonitorParams(), predictions=None, series_stats=None,
        summaries=monitoring.sample_summaries(*writers_draw(rng, 500, val_writers), CHANNELS, 255),
    )  # fmt: skip
    assert {c["threshold"] for c in out["checks"]} == {0.1}
