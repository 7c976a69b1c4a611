"""`make bench-missing`: how much missing sensor data STFN tolerates, measured, to set the default
of `data.max_missing_ratio`.

Readings are removed in contiguous runs, the way sensors fail, in train, val and test alike:
- moving-digits (generated): in every window, each channel loses one run of round(p * T) steps
  at a random place;
- irish-wind (real, complete): each station's daily record alternates present and missing spells
  (geometric lengths, missing spells 7 days on average) so that a share p of its days is missing,
  before the 14-day windows are cut (a gap spans neighbouring samples, as in a real record).
Then featurize -> train -> evaluate (the pipeline's own stages, default settings, one seed) and
the test score beside the 0 % one. Writes reports/missing_tolerance.json and prints a table.

    .venv/bin/python benchmarks/missing_tolerance.py [--levels 0,0.1,0.3] [--datasets irish-wind]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from common import REPO, STATE  # noqa: E402

LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
MEAN_GAP_DAYS = 7.0
DIGITS = {"n_train": 6000, "n_val": 1000, "n_test": 1000}  # half the default size: 7 levels in ~1 h


def gaps_in_windows(series: pd.DataFrame, channels: list[str], share: float, steps: int, seed: int) -> pd.DataFrame:
    """Long-format series (sample_id, step, channels...): in each window each channel loses one
    contiguous run of round(share * steps) steps at a random place."""
    out = series.sort_values(["sample_id", "step"]).reset_index(drop=True)
    k = int(round(share * steps))
    if k == 0:
        return out
    rng = np.random.default_rng(seed)
    n = len(out) // steps
    for c in channels:
        values = out[c].to_numpy(np.float64, copy=True).reshape(n, steps)
        start = rng.integers(0, steps - k + 1, size=n)
        run = (np.arange(steps)[None] >= start[:, None]) & (np.arange(steps)[None] < start[:, None] + k)
        values[run] = np.nan
        out[c] = values.reshape(-1)
    return out


def gaps_in_record(values: np.ndarray, share: float, seed: int, mean_gap: float = MEAN_GAP_DAYS) -> np.ndarray:
    """A copy of a [days, stations] record where each station alternates present and missing
    spells (geometric lengths; missing spells `mean_gap` days on average) for a share `share`."""
    out = values.astype(np.float32).copy()
    if share <= 0:
        return out
    rng = np.random.default_rng(seed)
    mean_present = mean_gap * (1 - share) / share
    for s in range(out.shape[1]):
        day, missing = 0, rng.random() < share
        while day < len(out):
            length = rng.geometric(1 / (mean_gap if missing else max(mean_present, 1.0)))
            if missing:
                out[day : day + length, s] = np.nan
            day += length
            missing = not missing
    return out


def one_run(name: str, dataset, extra: list[str]) -> dict:
    """featurize -> train -> evaluate on `dataset` (spec, samples, series, frames) in a fresh
    project; the test metrics and the baselines'."""
    from stfn.config import Paths, load_params
    from stfn.data.contract import write_dataset
    from stfn.stages.evaluate import evaluate
    from stfn.stages.featurize import featurize
    from stfn.stages.train import train

    root = STATE / f"missing-{name}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    spec = dataset[0]
    write_dataset(root / "data" / "raw" / spec.name, *dataset)
    paths = Paths(root)
    params = load_params(paths.params_file, [f"data.dataset={spec.name}", *extra])
    t0 = time.perf_counter()
    featurize(params, paths)
    trained = train(params, paths)
    m = evaluate(params, paths)["metrics"]
    return {
        "test": m["test"],
        "baselines": {k: v["test"] for k, v in m.get("baselines", {}).items()},
        "epochs": trained["epochs_run"],
        "best_epoch": trained["best_epoch"],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def digits(level: float) -> tuple:
    from stfn.config import MovingDigitsParams
    from stfn.data.moving_digits import make_moving_digits

    p = MovingDigitsParams(**DIGITS)
    spec, samples, series, frames = make_moving_digits(p)
    return spec, samples, gaps_in_windows(series, spec.channel_names, level, p.steps, seed=1), frames


def wind(level: float) -> tuple:
    from stfn.data import importers

    cache = REPO / ".stfn" / "cache" / "irish-wind"
    daily, stations = importers.read_wind(importers.find_rda(None, cache))
    codes = list(stations["code"])
    daily[codes] = gaps_in_record(daily[codes].to_numpy(), level, seed=1)
    return importers.build_irish_wind(daily, stations)


DATASETS = {"moving-digits": (digits, "accuracy"), "irish-wind": (wind, "mae")}


def table(results: dict) -> str:
    lines = []
    for name, rows in results.items():
        metric = DATASETS[name][1]
        base = rows.get("0.0", {}).get("test", {}).get(metric)
        lines.append(f"\n{name}: test {metric} as readings go missing (contiguous runs, train and test alike)")
        head = f"{'missing':>8} {metric:>9} {'vs 0 %':>8}"
        lines.append(head + ("  ridge mae  best baseline" if metric == "mae" else ""))
        for level, r in rows.items():
            v = r["test"][metric]
            rel = "" if base is None else f"{(v - base) / base * 100:+7.1f}%"
            extra = ""
            if r["baselines"]:
                best = min(r["baselines"], key=lambda b: r["baselines"][b]["mae"])
                extra = f"  {r['baselines']['ridge']['mae']:9.3f}  {best} {r['baselines'][best]['mae']:.3f}"
            lines.append(f"{float(level) * 100:7.0f}% {v:9.4f} {rel:>8}{extra}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default=",".join(str(v) for v in LEVELS))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--out", default=str(REPO / "reports" / "missing_tolerance.json"))
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.datasets.split(","):
        make, _ = DATASETS[name]
        for level in (float(v) for v in args.levels.split(",")):
            print(f"{name}: {level:.0%} missing ...", flush=True)
            results.setdefault(name, {})[str(level)] = one_run(f"{name}-{level}", make(level), [])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")  # after each run: a long job keeps what it did
            print(table({name: results[name]}), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
