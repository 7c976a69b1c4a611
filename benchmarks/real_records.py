"""STFN with default settings against the simple baselines, on real recordings.

    python benchmarks/real_records.py [--datasets irish-wind,german-pm10,...] [--out docs/data/real_records.json]

Each dataset is imported (`stfn import NAME`) when data/raw/NAME is missing, then featurized and
trained with params.yaml as it is (`auto` settings resolved for it, as `stfn run` resolves them),
in a scratch project folder: no MLflow run, nothing registered. On the test rows (the split the
importer declares) it scores STFN and every baseline the dataset allows (persistence, climatology,
ridge: `stfn.baselines`, as `stfn run` reports them) on the same rows, and tests the margin to the
best baseline, STFN's MAE minus its (negative: STFN better): a block bootstrap of the per-row
difference of absolute errors over the time-ordered test rows (`stfn.evaluation.paired_block_bootstrap`),
since overlapping windows make neighbouring rows dependent. Writes the
snapshot the docs' table is generated from (docs/generate.py), with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DATASETS = ("irish-wind", "german-pm10", "colorado-temperature", "southern-germany-flu")


def measure(name: str, params_file: Path | None = None) -> dict:
    """STFN trained with `params_file` (default: params.yaml) and the baselines on `name`'s test rows.
    `abs_errors` (STFN's, on the rows scored, in time order) is for a caller's own comparison."""
    from stfn import defaults
    from stfn.baselines import regression_baselines
    from stfn.config import Paths, load_params
    from stfn.data import contract
    from stfn.evaluation import paired_block_bootstrap
    from stfn.features import load_features
    from stfn.stages.evaluate import score_split
    from stfn.stages.featurize import featurize
    from stfn.training import fit

    raw = ROOT / "data" / "raw" / name
    if not raw.is_dir():
        subprocess.run([sys.executable, "-m", "stfn", "import", name], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix=f"stfn-real-{name}-") as tmp:
        scratch = Path(tmp)
        shutil.copy(params_file or ROOT / "params.yaml", scratch / "params.yaml")
        (scratch / "data" / "raw").mkdir(parents=True)
        (scratch / "data" / "raw" / name).symlink_to(raw)
        paths = Paths(scratch)
        params, choices = defaults.for_dataset(load_params(paths.params_file, [f"data.dataset={name}"]), paths)
        featurize(params, paths)
        fs = load_features(paths.features_dir(name))
        t0 = time.perf_counter()
        result = fit(fs, params.model, params.train, params.seed, scratch / "model", resume=False)
        seconds = time.perf_counter() - t0
        test = fs.rows("test")
        _, out, _ = score_split(fs, result.model, "test")
        st = fs.stats
        stfn_pred = out[:, 0] * st["target_std"] + st["target_mean"]
        samples = contract.read_parquet(raw, contract.SAMPLES_FILE, name)
        series = contract.series_array(
            contract.read_parquet(raw, contract.SERIES_FILE, name), samples["sample_id"], fs.spec
        )
        split = np.empty(len(samples), dtype=object)
        split[fs.index["row"].to_numpy()] = fs.index["split"].to_numpy()
        base = regression_baselines(fs.spec, samples, series, split)
    labels = samples["label"].to_numpy(np.float64)
    ok = np.ones(len(test), bool)  # the same rows for every model: those every baseline could forecast
    for b in base.values():
        ok &= np.isfinite(b["pred"][test])
    rows = test[ok]
    order = np.argsort(fs.index["timestamp"].to_numpy()[rows], kind="stable") if "timestamp" in fs.index else None
    rows = rows[order] if order is not None else rows
    stfn_abs = np.abs(stfn_pred[np.searchsorted(test, rows)] - labels[rows])
    maes = {k: float(np.abs(b["pred"][rows] - labels[rows]).mean()) for k, b in base.items()}
    best = min(maes, key=maes.get)
    test_result = paired_block_bootstrap(stfn_abs, np.abs(base[best]["pred"][rows] - labels[rows]))
    return {
        "dataset": name,
        "source": fs.spec.source,
        "description": fs.spec.description,
        "counts": fs.meta["counts"],
        "settings": [c.line() for c in choices],
        "starts_from": result.base,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(seconds, 1),
        "stfn_mae": float(stfn_abs.mean()),
        "baselines_mae": maes,
        "best_baseline": best,
        "margin": test_result,
        "abs_errors": stfn_abs,
    }


def main() -> None:
    from common import machine, now  # benchmarks/common.py

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--out", default=str(ROOT / "docs" / "data" / "real_records.json"))
    a = ap.parse_args()
    results = []
    for name in a.datasets.split(","):
        r = measure(name)
        m = r["margin"]
        print(
            f"{name}: STFN {r['stfn_mae']:.4f} vs {r['best_baseline']} {r['baselines_mae'][r['best_baseline']]:.4f} "
            f"(margin {m['mean_difference']:+.4f}, 95% [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}], "
            f"p={m['p_not_below_zero']:.3f}); starts from {r['starts_from'].get('choice')}, {r['epochs_run']} epochs",
            flush=True,
        )
        r.pop("abs_errors")
        results.append(r)
    snapshot = {"machine": machine(), "date": now(), "command": " ".join(["python", *sys.argv]), "datasets": results}
    Path(a.out).write_text(json.dumps(snapshot, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
