"""The training budget by the data's size (`train.epochs: auto`, `train.patience: auto`): on
two-shapes datasets of about 1k, 5k and 20k samples (a generator other than moving-digits), a run
with it reaches at least 0.98 of the test accuracy of a run with three times the epochs and early
stopping off, measured side by side in the same test. Every size is scored on at least 1,500 test
rows (drawn alike, beside the dataset's own): on a 1k dataset's own 150, one sample is 0.7 % and
the 2 % bar would measure the draw, not the budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from shapes import write_two_shapes  # tests/shapes.py

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.mark.slow
@pytest.mark.thorough  # make test-all: three sizes, six trainings (about 3 minutes on 2 cores)
@pytest.mark.parametrize(
    "n",
    [
        # on the dataset's own 150 test rows, with 2 threads: on an Intel AMX host `auto` (91 epochs,
        # early-stopped at 46) 0.920 against 0.953 with 273 epochs (0.965 of it: 5 samples); on an
        # AMD EPYC host 0.933 against 0.947 (0.985: 2 samples; patience a third or a half of the
        # epochs changed nothing, the best epoch stayed 41). Hence the 1,500 test rows
        1000,
        5000,  # measured: 18 epochs (ran 17) 0.991 against 54 epochs 0.995
        20000,  # measured: 5 epochs 0.996 against 15 epochs 0.995
    ],
)
def test_the_auto_budget_reaches_what_three_times_the_epochs_without_early_stopping_does(n, tmp_path):
    from stfn import defaults
    from stfn.config import Paths, load_params
    from stfn.features import load_features
    from stfn.stages.evaluate import score_split
    from stfn.stages.featurize import featurize
    from stfn.training import fit

    shutil.copy(REPO_PARAMS, tmp_path / "params.yaml")
    write_two_shapes(tmp_path / "data" / "raw" / "two-shapes", n, seed=n, test_rows=1500)
    paths = Paths(tmp_path)
    budget = ["train.epochs=auto", "train.patience=auto"]  # the rule, as `auto` resolves it
    params, choices = defaults.for_dataset(load_params(paths.params_file, ["data.dataset=two-shapes", *budget]), paths)
    assert not {c.key: c for c in choices}["train.epochs"].given  # chosen by the rule
    featurize(params, paths)
    fs = load_features(paths.features_dir("two-shapes"))

    def accuracy(train, out: str) -> tuple[float, int]:
        result = fit(fs, params.model, train, params.seed, tmp_path / out)
        return score_split(fs, result.model, "test")[0]["metrics"]["accuracy"], len(result.history)

    epochs = params.train.epochs
    default, ran = accuracy(params.train, "default")
    longer = params.train.model_copy(update={"epochs": 3 * epochs, "patience": 3 * epochs + 1})  # never stops early
    reference, _ = accuracy(longer, "three-times")
    print(f"n={n}: default {epochs} epochs (ran {ran}) {default:.3f}; {3 * epochs} epochs {reference:.3f}")
    assert reference > 0.6, f"the task was not learned (frames alone reach 0.5): {reference:.3f}"
    assert default >= 0.98 * reference, (n, epochs, ran, default, reference)
