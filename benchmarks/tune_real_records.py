"""Is tuning worth it? Default settings against tuned ones, and the best baseline, on real
recordings, all on the test split.

    python benchmarks/tune_real_records.py [--datasets irish-wind,german-pm10,colorado-temperature]
                                           [--trials 8] [--timeout 10]

For each dataset (imported by `stfn import` when missing): STFN with params.yaml as it is and
every baseline on the test rows (benchmarks/real_records.py's `measure`); then `stfn tune`'s
study (stfn.stages.tune, params.yaml's `tune` section, `--trials` trials or `--timeout` minutes,
judged on the validation split only) in a scratch project, its best settings written into that
project's params.yaml as the dataset's section; then STFN trained with them, scored on the same
test rows. The tuned model's margin over the default one is tested by the same block bootstrap
over the time-ordered rows. Writes docs/data/tune_real_records.json (the docs' Tuning page is
generated from it), with the machine, the date and how long each study took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import machine, now
from real_records import ROOT, measure

from stfn.config import Paths, load_params
from stfn.evaluation import paired_block_bootstrap
from stfn.stages.featurize import featurize
from stfn.stages.tune import tune
from stfn.stages.validate import validate

OUT = ROOT / "docs" / "data" / "tune_real_records.json"


def tuned_params(name: str, trials: int, timeout: float) -> tuple[Path, dict, float]:
    """A study on `name` in a scratch project; its params.yaml (with the tuned section) copied out."""
    with tempfile.TemporaryDirectory(prefix=f"stfn-tune-{name}-") as tmp:
        scratch = Path(tmp)
        shutil.copy(ROOT / "params.yaml", scratch / "params.yaml")
        (scratch / "data" / "raw").mkdir(parents=True)
        (scratch / "data" / "raw" / name).symlink_to(ROOT / "data" / "raw" / name)
        paths = Paths(scratch)
        params = load_params(paths.params_file, [f"data.dataset={name}"])
        featurize(params, paths, validate(params, paths)["data_md5"])
        t0 = time.perf_counter()
        summary = tune(params, paths, name, trials=trials, timeout_minutes=timeout, write=True)
        seconds = time.perf_counter() - t0
        out = Path(tempfile.mkdtemp(prefix="stfn-tuned-")) / "params.yaml"
        shutil.copy(paths.params_file, out)
    return out, summary, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="irish-wind,german-pm10,colorado-temperature")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=10.0, help="minutes per study")
    a = ap.parse_args()
    results = []
    for name in a.datasets.split(","):
        default = measure(name)
        params_file, summary, seconds = tuned_params(name, a.trials, a.timeout)
        tuned = measure(name, params_file)
        section = yaml.safe_load(params_file.read_text())["datasets"][name]
        margin = paired_block_bootstrap(tuned.pop("abs_errors"), default.pop("abs_errors"))
        best = default["best_baseline"]
        row = {
            "dataset": name,
            "source": default["source"],
            "test_rows": margin["rows"],
            "default_mae": default["stfn_mae"],
            "tuned_mae": tuned["stfn_mae"],
            "best_baseline": best,
            "best_baseline_mae": default["baselines_mae"][best],
            "tuned_minus_default": margin,
            "tuning_seconds": round(seconds, 1),
            "trials": summary["trials"],
            "pruned": summary["pruned"],
            "best_val_mae": summary["best"]["value"] if summary.get("best") else None,
            "tuned_settings": section,
            "default_epochs": default["epochs_run"],
            "tuned_epochs": tuned["epochs_run"],
        }
        results.append(row)
        print(
            f"{name}: default {row['default_mae']:.4f}, tuned {row['tuned_mae']:.4f} "
            f"(tuned - default {margin['mean_difference']:+.4f}, 95% [{margin['ci95'][0]:+.4f}, "
            f"{margin['ci95'][1]:+.4f}]), {best} {row['best_baseline_mae']:.4f}; "
            f"{summary['trials']} trials ({summary['pruned']} pruned) in {seconds:.0f} s",
            flush=True,
        )
    snapshot = {"machine": machine(), "date": now(), "command": " ".join(["python", *sys.argv]),
                "trials": a.trials, "timeout_minutes": a.timeout, "datasets": results}  # fmt: skip
    OUT.write_text(json.dumps(snapshot, indent=2, default=float) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
