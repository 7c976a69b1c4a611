"""The `retrain` flow: refresh data, train, register, gate on the current test split."""

import pytest


@pytest.mark.slow
def test_retrain_in_process_registers_and_gates(tmp_path, write_tiny_params):
    from flows.retrain import retrain
    from mlflow import MlflowClient
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits

    # a dataset of its own: a registered model no other test touches
    small = MovingDigitsParams(n_train=160, n_val=48, n_test=48, seed=4)
    write_dataset(tmp_path / "data" / "raw" / "retrain-digits", *make_moving_digits(small, name="retrain-digits"))
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": "retrain-digits"})
    first = retrain(root=str(tmp_path))
    assert first["where"] == "in-process" and first["promoted"] is True
    assert first["data"] == "not a DVC repo: using the workspace data"
    second = retrain(root=str(tmp_path), overrides=["registry.min_improvement=1.0"])
    assert int(second["version"]) == int(first["version"]) + 1 and second["promoted"] is False
    mv = MlflowClient().get_model_version("stfn-retrain-digits", str(second["version"]))
    assert (
        "does not beat" in mv.tags["decision_reason"]
        and "both on the current 48 test rows" in mv.tags["decision_reason"]
    )
