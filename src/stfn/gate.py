"""The promotion rule: when a new model version (the challenger) replaces @champion.

A challenger is promoted when
- there is no champion yet, or the champion has no recorded value of the metric to beat, or
- its test metric beats the champion's, measured on the same test rows, by more than nothing and
  by at least `registry.min_improvement` (params.yaml), in the metric's direction (higher accuracy,
  lower MAE: `evaluation.HIGHER_IS_BETTER`).

Everything else keeps the champion. The registry (`stfn.registry.judge`) supplies the champion's
value on the current test rows (recorded, or re-scored now), holds the promotion lock while it
asks this module, and records the verdict and its reason on the version. Pure: no MLflow here."""

from __future__ import annotations

from dataclasses import dataclass

from stfn.evaluation import HIGHER_IS_BETTER, improvement


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str  # one sentence: recorded on the version, printed in the run summary


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
