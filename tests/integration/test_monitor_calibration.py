"""The monitor on the champion's own unseen data: batches of 500 drawn from the built-in dataset's
validation and test splits (digit images of their own, never trained on: the generator's disjoint
pools; the champion is right on ~95 % of them) do not alarm, and the same batches made 30 %
darker still do. The champion is trained by the real pipeline on the built-in generator (its
seed, so its pools; a smaller training split and one epoch to stay quick), and each batch goes
through `stfn monitor`'s stage, MLflow run and report included."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.thorough]  # ~1 min: a champion of 2,000 samples, nine batches

SPLIT_SIZE = 1500  # the built-in validation and test splits' size (params.yaml)


@pytest.fixture(scope="module")
def champion(tmp_path_factory, write_tiny_params):
    from flows.training_pipeline import training_pipeline

    root = tmp_path_factory.mktemp("calibration")
    write_tiny_params(
        root / "params.yaml",
        **{
            "prepare.moving_digits.n_train": 2000,
            "prepare.moving_digits.n_val": SPLIT_SIZE,
            "prepare.moving_digits.n_test": SPLIT_SIZE,
            "train.epochs": 1,
        },
    )
    training_pipeline(root=str(root))
    return root


def batch_of(root: Path, split: str, rows: np.ndarray, out: Path, darker: bool = False) -> Path:
    """Samples `rows` of the built-in dataset's `split`, written as a batch folder in the contract."""
    from stfn.data import contract

    folder = root / "data" / "raw" / "moving-digits"
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    where = np.flatnonzero(samples["split"].to_numpy() == split)[rows]
    picked = samples.iloc[where].drop(columns="split").reset_index(drop=True)
    series = contract.read_parquet(folder, contract.SERIES_FILE, spec.name)
    series = series[series["sample_id"].isin(set(picked["sample_id"]))].reset_index(drop=True)
    frames = np.asarray(contract.open_frames(folder, spec)[where])
    if darker:
        frames = np.rint(frames * 0.7).astype(frames.dtype)
    return contract.write_dataset(out, spec, picked, series, frames)


def test_the_champions_own_unseen_data_does_not_alarm_and_darker_frames_do(champion, tmp_path):
    from stfn.config import Paths, load_params
    from stfn.stages.monitor import monitor

    root = champion
    params, paths = load_params(root / "params.yaml"), Paths(root)
    rng = np.random.default_rng(0)
    alarms, reports = [], []
    for split, n_batches in (("val", 3), ("test", 5)):
        for b in range(n_batches):
            rows = rng.choice(SPLIT_SIZE, 500, replace=False)
            report = monitor(params, paths, batch_of(root, split, rows, tmp_path / f"{split}-{b}"), "moving-digits")
            alarms.append(report["alarm"])
            reports.append(report)
    assert sum(alarms) == 0, [r["summary"] for r in reports if r["alarm"]]  # monitor.alpha = 0.01 of 8 batches
    calibrated = [c for c in reports[-1]["checks"] if c["name"] == "frames.0.mean"][0]
    assert calibrated["threshold"] > params.monitor.min_ks and "unseen validation data" in calibrated["detail"]
    assert reports[-1]["labelled"] and reports[-1]["n"] == 500  # judged as labelled batches: quality too
    assert len(list(paths.monitoring.glob("moving-digits-*.json"))) == 8  # a report each, none overwritten
    # the same kind of batch against the reference without its calibration (as logged before it):
    # the unseen digits' ink alone sets off the alarm the calibration removes
    legacy = json.loads((root / "reports" / "reference" / "moving-digits.json").read_text())
    del legacy["unseen"]
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    plain = monitor(params, paths, tmp_path / "test-4", "moving-digits", reference_file=tmp_path / "legacy.json")
    assert plain["alarm"] and {c.rsplit(".", 1)[0] for c in plain["crossed"]} == {"frames.0"}
    dark = monitor(params, paths, batch_of(root, "test", rows, tmp_path / "darker", darker=True), "moving-digits")
    assert dark["alarm"] and {"frames.0.mean", "frames.0.std"} <= set(dark["crossed"])
