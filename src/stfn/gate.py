"""The promotion rule: when a new model version (the challenger) replaces @champion.

The paired gate (`judge`), which `stfn run` applies: the registry scores the champion it finds
under the promotion lock and the challenger, both as served, on the same current test rows, and
the challenger is promoted only when every check passes:

1. **a gain beyond noise**: its gain in the primary metric is positive, at least
   `registry.min_improvement`, and significant at `registry.alpha` by a paired one-sided test:
   McNemar's exact test for accuracy (scipy's binomial test on the rows only one model gets
   right), a circular block bootstrap of the absolute errors over the time-ordered rows for MAE
   (arch; overlapping windows make neighbouring rows dependent). Chance alone then promotes at
   most `alpha` of the time, where a gain of 0.0 would promote half the challengers that are no
   better (tests/code/test_gate_decision.py simulates both);
2. **no class (classification) or slice (regression: quarters of the year, or the target's
   quartiles without timestamps) worse beyond noise**: the same paired test of a loss per group,
   Holm's correction over the groups (statsmodels): a better total can hide a collapsed class;
3. **calibration**: the challenger's ECE at most the champion's + `registry.max_ece_increase`:
   accuracy can rise while the probabilities a user thresholds get worse;
4. **size**: its parameters at most `registry.max_size_ratio` times the champion's (serving cost);
5. **the simple-forecast bar** (regression, `registry.beat_baselines`): its test error no higher
   than the best baseline's on the same rows; this one applies with no champion too, so a model
   a baseline beats is registered but never promoted, and the reason names the baseline.

Checks 3-5 are MLflow's model validation (`validate_evaluation_results` with a
`MetricThreshold`); 1-2 are what it lacks (a paired test). Every decision has a report, a row per
check (`Check`), tagged on the version, logged as the run's gate/report.json, printed in the run
summary and shown by `stfn models --gate VERSION`.

`decide` is the scalar rule on two recorded values (no rows): what `stfn promote` style callers
and the registry's tests use when there are no outputs to pair. Pure: no tracking server here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest, ttest_1samp

from stfn.evaluation import HIGHER_IS_BETTER, improvement, paired_block_bootstrap

logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)  # "Model validation passed!"


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str  # one sentence: recorded on the version, printed in the run summary
    checks: list = field(default_factory=list)  # the gate report: a Check per row (the paired gate)


@dataclass
class Decision:
    """A verdict as the registry applied it to a registered version."""

    name: str
    version: str
    promoted: bool
    reason: str
    metric: str
    value: float
    champion_version: str | None = None
    champion_value: float | None = None
    checks: list = field(default_factory=list)  # the gate report's rows (Check.row())


def is_better(metric: str, challenger: float, champion: float, min_improvement: float = 0.0) -> bool:
    """Does `challenger` strictly beat `champion` on `metric`, by at least `min_improvement`?"""
    gain = improvement(metric, challenger, champion)
    return gain > 0 and gain >= min_improvement


def decide(
    metric: str,
    value: float,
    champion_version: str | None,
    champion_value: float | None,
    min_improvement: float,
    basis: str = "",
) -> Verdict:
    """The verdict on a challenger scoring `value` against the champion (`champion_version` None:
    there is none; `champion_value` None: it has no recorded `metric`). `basis` says how the
    champion's value was obtained (recorded on the same test rows, or re-scored on them)."""
    if champion_version is None:
        return Verdict(True, "no champion yet")
    if champion_value is None:
        return Verdict(True, f"champion v{champion_version} has no recorded test {metric}")
    gain = improvement(metric, value, champion_value)
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    promote = is_better(metric, value, champion_value, min_improvement)
    verb = "beats" if promote else "does not beat"
    reason = (
        f"test {metric} {value:.4f} {verb} champion v{champion_version}'s {champion_value:.4f} "
        f"by the required {min_improvement:g} ({direction} is better; change {gain:+.4f})"
        + (f"; {basis}" if basis else "")
    )
    return Verdict(promote, reason)


# --------------------------------------------------------------------------------------------
# The paired gate: both models scored on the same current test rows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """params.yaml's `registry` section, as the gate reads it."""

    alpha: float = 0.05  # a gain must be beyond noise at this level; a guardrail fails on a loss beyond it
    min_improvement: float = 0.0
    max_ece_increase: float = 0.01
    max_size_ratio: float = 2.0
    beat_baselines: bool = True


@dataclass(frozen=True)
class Check:
    """A row of the gate report: the challenger's value, the champion's, the bar, the outcome."""

    name: str
    challenger: float | None
    champion: float | None
    threshold: str
    passed: bool
    detail: str = ""

    def row(self) -> dict[str, object]:
        return {
            "check": self.name,
            "challenger": self.challenger,
            "champion": self.champion,
            "threshold": self.threshold,
            "passed": self.passed,
            "detail": self.detail,
        }


@dataclass
class Evidence:
    """One model on the current test rows: its outputs (class probabilities (N, K) or values (N,),
    rows in time order for regression), its test metrics and its size."""

    outputs: np.ndarray
    metrics: dict[str, float]
    n_parameters: int | None = None


def _correct(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return (np.asarray(probs).argmax(axis=1) == labels).astype(np.float64)


def _abs_error(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(values, np.float64).reshape(len(labels)) - labels)


def paired_gain(task: str, labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> dict[str, float]:
    """The challenger's gain on the same rows (accuracy points, or MAE units; positive = better),
    its 95 % interval and the one-sided p-value of "no gain":
    - classification: McNemar's exact test (scipy's binomial test on the discordant pairs: rows
      only one model gets right), the interval the paired t interval of the per-row difference
      (scipy's `ttest_1samp`); rows are independent samples;
    - regression: a circular block bootstrap of the per-row difference of absolute errors over the
      time-ordered rows (`evaluation.paired_block_bootstrap`, arch): overlapping windows make
      neighbouring rows dependent."""
    labels = np.asarray(labels)
    if task == "classification":
        a, b = _correct(labels, champion), _correct(labels, challenger)
        won, lost = int(((b == 1) & (a == 0)).sum()), int(((b == 0) & (a == 1)).sum())
        p = float(binomtest(won, won + lost, 0.5, alternative="greater").pvalue) if won + lost else 1.0
        d = b - a
        lo = hi = 0.0
        if d.any():  # the paired t interval of the mean difference (scipy): n is large, d bounded
            ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
            lo, hi = float(ci.low), float(ci.high)
        return {"gain": float(d.mean()), "ci95": [lo, hi], "p": p, "test": f"McNemar exact ({won} won, {lost} lost)"}
    bs = paired_block_bootstrap(_abs_error(labels, challenger), _abs_error(labels, champion))
    lo, hi = bs["ci95"]
    return {"gain": -bs["mean_difference"], "ci95": [-hi, -lo], "p": bs["p_not_below_zero"], "test": bs["test"]}


def significance(task: str, metric: str, labels: np.ndarray, champ: Evidence, chall: Evidence, rule: Rule) -> Check:
    g = paired_gain(task, labels, champ.outputs, chall.outputs)
    lo, hi = g["ci95"]
    passed = g["p"] < rule.alpha and g["gain"] > 0 and g["gain"] >= rule.min_improvement
    return Check(
        f"gain in {metric}, beyond noise",
        chall.metrics.get(metric),
        champ.metrics.get(metric),
        f"p < {rule.alpha:g} and gain >= {rule.min_improvement:g}",
        passed,
        f"gain {g['gain']:+.4f} (95 % [{lo:+.4f}, {hi:+.4f}]), p = {g['p']:.3g}, {g['test']}",
    )


def no_group_worse(
    task: str,
    labels: np.ndarray,
    groups: dict[str, np.ndarray],
    champ: Evidence,
    chall: Evidence,
    rule: Rule,
    kind: str,
) -> Check:
    """No class (classification) or slice (regression) worse beyond noise: per group the paired
    test of a loss, Holm's correction over the groups (statsmodels' `multipletests`)."""
    from statsmodels.stats.multitest import multipletests  # lazy: statsmodels is slow to import (serve, CLI)

    names, ps, gains = [], [], []
    for name, mask in groups.items():
        if mask.sum() < 2:
            continue
        g = paired_gain(task, labels[mask], chall.outputs[mask], champ.outputs[mask])  # the champion's "gain"
        names.append(name)
        ps.append(g["p"])
        gains.append(-g["gain"])
    if not names:
        return Check(f"no {kind} worse", None, None, "no groups", True, "nothing to compare")
    reject, adjusted, _, _ = multipletests(ps, alpha=rule.alpha, method="holm")
    worst = int(np.argmin(gains))
    worse = [f"{n} ({gains[i]:+.4f}, adjusted p {adjusted[i]:.3g})" for i, n in enumerate(names) if reject[i]]
    return Check(
        f"no {kind} worse beyond noise",
        gains[worst],
        0.0,
        f"Holm-adjusted p >= {rule.alpha:g} for a loss in each of {len(names)} {kind}es",
        not worse,
        ("worse: " + ", ".join(worse)) if worse else f"largest loss {names[worst]} {gains[worst]:+.4f}",
    )


def _threshold_check(name: str, metric: str, value: float, bar: float, greater_is_better: bool, detail: str) -> Check:
    """A bar on one value, checked with MLflow's model validation (`validate_evaluation_results`
    with a `MetricThreshold`)."""
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException, validate_evaluation_results

    try:
        validate_evaluation_results(
            {metric: MetricThreshold(threshold=bar, greater_is_better=greater_is_better)},
            EvaluationResult(metrics={metric: value}, artifacts={}),
        )
        passed = True
    except ModelValidationFailedException:
        passed = False
    return Check(name, value, None, f"{'>=' if greater_is_better else '<='} {bar:.4g}", passed, detail)


def calibration(champ: Evidence, chall: Evidence, rule: Rule) -> Check | None:
    if "ece" not in chall.metrics or "ece" not in champ.metrics:
        return None
    c = _threshold_check(
        "calibration (ECE) not worse than the margin",
        "ece",
        chall.metrics["ece"],
        champ.metrics["ece"] + rule.max_ece_increase,
        False,
        f"champion's ECE {champ.metrics['ece']:.4f} + {rule.max_ece_increase:g}",
    )
    return Check(c.name, c.challenger, champ.metrics["ece"], c.threshold, c.passed, c.detail)


def size(champ: Evidence, chall: Evidence, rule: Rule) -> Check | None:
    if not champ.n_parameters or not chall.n_parameters:
        return None
    c = _threshold_check(
        "model size within the ratio",
        "n_parameters",
        float(chall.n_parameters),
        rule.max_size_ratio * champ.n_parameters,
        False,
        f"{rule.max_size_ratio:g} x the champion's {champ.n_parameters:,} parameters",
    )
    return Check(c.name, c.challenger, float(champ.n_parameters), c.threshold, c.passed, c.detail)


def versus_baselines(metric: str, chall: Evidence, baselines: dict[str, float], rule: Rule) -> Check | None:
    """The challenger's test error no higher than the best simple baseline's on the same rows."""
    if not baselines or not rule.beat_baselines or metric not in chall.metrics:
        return None
    best = min(baselines, key=baselines.get) if not HIGHER_IS_BETTER[metric] else max(baselines, key=baselines.get)
    c = _threshold_check(
        "no worse than the best simple baseline",
        metric,
        chall.metrics[metric],
        baselines[best],
        HIGHER_IS_BETTER[metric],
        f"the {best} baseline's test {metric}",
    )
    return Check(c.name, c.challenger, None, c.threshold, c.passed, c.detail)


def judge(
    task: str,
    metric: str,
    labels: np.ndarray,
    challenger: Evidence,
    champion: Evidence | None,
    champion_version: str | None,
    rule: Rule,
    groups: dict[str, np.ndarray] | None = None,
    baselines: dict[str, float] | None = None,
) -> Verdict:
    """The whole paired gate: with no champion only the baseline bar; otherwise a gain beyond
    noise, then the guardrails (no class or slice worse, calibration, size, the baseline bar).
    The verdict's reason names the first failed check, or the gain and its test."""
    checks: list[Check] = []
    bar = versus_baselines(metric, challenger, baselines or {}, rule)
    if champion is None:
        checks = [bar] if bar else []
        if bar and not bar.passed:
            return Verdict(
                False, f"no champion yet, but it loses to a simple forecast: {bar.detail} {bar.threshold}", checks
            )
        return Verdict(True, "no champion yet", checks)
    kind = "class" if task == "classification" else "slice"
    found = [
        significance(task, metric, labels, champion, challenger, rule),
        no_group_worse(task, labels, groups or {}, champion, challenger, rule, kind) if groups else None,
        calibration(champion, challenger, rule),
        size(champion, challenger, rule),
        bar,
    ]
    checks = [c for c in found if c is not None]
    gain = checks[0]
    both = (
        f"test {metric} {challenger.metrics[metric]:.4f} {{verb}} champion v{champion_version}'s "
        f"{champion.metrics[metric]:.4f} (both on the current {len(labels)} test rows)"
    )
    if not gain.passed:
        return Verdict(False, both.format(verb="does not beat") + f" beyond noise: {gain.detail}", checks)
    failed = [c for c in checks if not c.passed]
    if failed:
        first = failed[0]
        text = both.format(verb="beats") + f" ({gain.detail}), but {first.name} failed: {first.detail}"
        return Verdict(False, text, checks)
    return Verdict(True, both.format(verb="beats") + f": {gain.detail}; every guardrail passed", checks)
