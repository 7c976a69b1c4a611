"""The gate against churn, for real: ten challengers trained with other seeds on the champion's
own data move @champion at most once in all; a challenger trained with three times the budget of
a deliberately weak champion is promoted. `make test-all` (twelve trainings, a few minutes)."""

from __future__ import annotations

import pytest
from teamlib import LEARNING_DIGITS

SMALL = {"data.dataset": "churn-digits", **LEARNING_DIGITS}


def dataset(root, write_tiny_params, name: str, seed: int) -> None:
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    write_tiny_params(root / "params.yaml", **{**SMALL, "data.dataset": name})
    digits = MovingDigitsParams(
        **{k.rsplit(".", 1)[1]: v for k, v in SMALL.items() if k.startswith("prepare.")}, seed=seed
    )
    write_dataset(root / "data" / "raw" / name, *make_moving_digits(digits, name=name))


@pytest.mark.slow
@pytest.mark.thorough
def test_ten_reseeded_challengers_move_the_champion_at_most_once(tmp_path, write_tiny_params):
    from flows.training_pipeline import training_pipeline
    from stfn import registry

    dataset(tmp_path, write_tiny_params, "churn-digits", seed=21)
    first = training_pipeline(root=str(tmp_path))
    assert first["promoted"]
    results = [training_pipeline(root=str(tmp_path), overrides=[f"seed={s}"]) for s in range(1, 11)]
    accuracies = [r["metrics"]["test"]["accuracy"] for r in results]
    moves = [e for e in registry.champion_history("stfn-churn-digits") if e["action"] == "promote"]
    print(f"champion {first['metrics']['test']['accuracy']:.3f}; challengers {accuracies}; moves {len(moves) - 1}")
    assert len(moves) - 1 <= 1, [r["reason"] for r in results]
    assert all(r["gate"] and r["gate"][0]["check"].startswith("gain in accuracy") for r in results)


@pytest.mark.slow
@pytest.mark.thorough
def test_a_truly_better_challenger_is_promoted(tmp_path, write_tiny_params):
    from flows.training_pipeline import training_pipeline

    dataset(tmp_path, write_tiny_params, "better-digits", seed=22)
    weak = training_pipeline(root=str(tmp_path), overrides=["train.epochs=2", "train.patience=2"])
    strong = training_pipeline(root=str(tmp_path), overrides=["train.epochs=6", "train.patience=6"])
    w, s = weak["metrics"]["test"]["accuracy"], strong["metrics"]["test"]["accuracy"]
    print(f"2 epochs {w:.3f}, 6 epochs {s:.3f}: {strong['reason']}")
    assert strong["promoted"], strong["reason"]
    assert all(c["passed"] for c in strong["gate"])
