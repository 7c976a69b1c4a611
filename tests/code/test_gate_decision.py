"""The paired gate alone, on simulated outputs (no training): chance does not promote, a real
gain does, each guardrail stops what it names, and the report fits a version tag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stfn import gate, registry

N = 1500
RULE = gate.Rule(alpha=0.05)


def onehot(correct: np.ndarray, labels: np.ndarray, k: int = 10, confidence: float = 1.0) -> np.ndarray:
    """Probabilities putting `confidence` on the label where `correct`, on another class elsewhere."""
    wrong = (labels + 1) % k
    probs = np.full((len(labels), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(labels)), np.where(correct, labels, wrong)] = confidence
    return probs


def pair(rng: np.random.Generator, p_champion: float, p_challenger: float, shared: float):
    """Labels and two classifiers' probabilities whose right answers share a difficulty with
    probability `shared` (models trained alike get the same rows wrong)."""
    labels = rng.integers(0, 10, N)
    u = rng.random(N)
    v = np.where(rng.random(N) < shared, u, rng.random(N))
    return labels, onehot(u < p_champion, labels), onehot(v < p_challenger, labels)


def promoted(labels, champion, challenger, rule=RULE) -> bool:
    return gate.significance(
        "classification", "accuracy", labels, gate.Evidence(champion, {}), gate.Evidence(challenger, {}), rule
    ).passed


@pytest.mark.parametrize("shared", [0.0, 0.5, 0.9])
def test_models_equal_in_truth_are_promoted_at_most_alpha_of_the_time(shared):
    rng = np.random.default_rng(1)
    rate = np.mean([promoted(*pair(rng, 0.96, 0.96, shared)) for _ in range(1000)])
    assert rate <= RULE.alpha, rate


@pytest.mark.parametrize("shared", [0.0, 0.5, 0.9])
def test_a_true_gain_of_two_points_on_1500_rows_is_promoted_with_power_of_at_least_0_8(shared):
    rng = np.random.default_rng(2)
    power = np.mean([promoted(*pair(rng, 0.95, 0.97, shared)) for _ in range(1000)])
    assert power >= 0.8, power


def test_the_gain_must_also_reach_min_improvement():
    rng = np.random.default_rng(3)
    labels, a, b = pair(rng, 0.90, 0.97, 0.5)
    assert promoted(labels, a, b)
    assert not promoted(labels, a, b, gate.Rule(alpha=0.05, min_improvement=0.2))


def test_the_reason_states_the_gain_its_interval_and_the_test():
    rng = np.random.default_rng(4)
    labels, a, b = pair(rng, 0.95, 0.95, 0.5)
    champ = gate.Evidence(a, {"accuracy": 0.95, "ece": 0.01}, 1000)
    chall = gate.Evidence(b, {"accuracy": 0.951, "ece": 0.01}, 1000)
    v = gate.judge("classification", "accuracy", labels, chall, champ, "3", RULE)
    assert not v.promote
    assert "does not beat champion v3's 0.9500 (both on the current 1500 test rows) beyond noise" in v.reason
    assert "95 % [" in v.reason and "McNemar exact" in v.reason


def regression_pair(rng: np.random.Generator, gain: float, n: int = 600):
    """Time-ordered targets with AR(1) errors shared by both models (overlapping windows), the
    challenger's absolute errors `gain` smaller in truth."""
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = 0.8 * e[i - 1] + rng.normal()
    y = rng.normal(10, 3, n)
    champion = y + e + rng.normal(0, 0.3, n)
    challenger = y + np.sign(e) * np.maximum(np.abs(e) - gain, 0) + rng.normal(0, 0.3, n)
    return y, champion, challenger


def test_regression_uses_the_block_bootstrap_on_time_ordered_errors():
    rng = np.random.default_rng(5)
    y, a, b = regression_pair(rng, gain=0.6)
    check = gate.significance(
        "regression", "mae", y, gate.Evidence(a, {"mae": 1.0}), gate.Evidence(b, {"mae": 0.5}), RULE
    )
    assert check.passed and "circular block bootstrap (arch)" in check.detail
    same = gate.significance(
        "regression", "mae", y, gate.Evidence(a, {"mae": 1.0}), gate.Evidence(a + 1e-9, {"mae": 1.0}), RULE
    )
    assert not same.passed


@pytest.mark.slow
@pytest.mark.thorough  # make test-all: 400 block bootstraps, about a minute
def test_regression_false_promotions_and_power_simulated():
    rng = np.random.default_rng(6)

    def rate(gain: float) -> float:
        wins = 0
        for _ in range(200):
            y, a, b = regression_pair(rng, gain)
            wins += gate.significance(
                "regression", "mae", y, gate.Evidence(a, {"mae": 0}), gate.Evidence(b, {"mae": 0}), RULE
            ).passed
        return wins / 200

    assert rate(0.0) <= RULE.alpha + 0.03  # 200 draws: the rate's own noise is about 0.015
    assert rate(0.5) >= 0.8


def test_a_class_worse_beyond_noise_keeps_the_champion_even_when_the_total_gains():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, N)
    a = rng.random(N) < 0.90
    b = rng.random(N) < 0.99
    b[labels == 3] = rng.random((labels == 3).sum()) < 0.6  # class 3 collapses
    groups = {f"class {k}": labels == k for k in range(10)}
    champ = gate.Evidence(onehot(a, labels), {"accuracy": a.mean(), "ece": 0.0})
    chall = gate.Evidence(onehot(b, labels), {"accuracy": b.mean(), "ece": 0.0})
    v = gate.judge("classification", "accuracy", labels, chall, champ, "1", RULE, groups)
    assert not v.promote and "no class worse beyond noise failed: worse: class 3" in v.reason
    rows = {c.name: c for c in v.checks}
    assert rows["gain in accuracy, beyond noise"].passed


def test_calibration_size_and_the_baseline_bar_each_stop_a_promotion():
    rng = np.random.default_rng(8)
    labels, a, b = pair(rng, 0.90, 0.97, 0.5)

    def verdict(chall_metrics, n_chall=1000, baselines=None, task="classification", metric="accuracy"):
        champ = gate.Evidence(a, {"accuracy": 0.90, "ece": 0.01, "mae": 2.0}, 1000)
        chall = gate.Evidence(b, {"accuracy": 0.97, "ece": 0.01, "mae": 1.0, **chall_metrics}, n_chall)
        return gate.judge(task, metric, labels, chall, champ, "1", RULE, None, baselines)

    assert verdict({}).promote
    cal = verdict({"ece": 0.05})
    assert not cal.promote and "calibration (ECE) not worse than the margin failed" in cal.reason
    big = verdict({}, n_chall=5000)
    assert not big.promote and "model size within the ratio failed" in big.reason
    # no champion: only the bar; a model a baseline beats is registered, never promoted, the baseline named
    loses = gate.judge(
        "regression", "mae", labels.astype(float), gate.Evidence(b[:, 0], {"mae": 1.3}), None, None, RULE,
        None, {"ridge": 1.2, "persistence": 1.6},
    )  # fmt: skip
    assert not loses.promote and "the ridge baseline's test mae" in loses.reason
    wins = gate.judge(
        "regression", "mae", labels.astype(float), gate.Evidence(b[:, 0], {"mae": 1.1}), None, None, RULE,
        None, {"ridge": 1.2},
    )  # fmt: skip
    assert wins.promote and wins.checks[0].passed


def test_the_report_fits_a_version_tag():
    checks = [gate.Check(f"check {i}", 0.5, 0.4, "<= 1", True, "x" * 3000) for i in range(8)]
    tag = registry.gate_report_tag(checks)
    assert len(tag) <= 5000
    rows = json.loads(tag)
    assert [r["check"] for r in rows] == [f"check {i}" for i in range(8)] and all(r["passed"] for r in rows)
