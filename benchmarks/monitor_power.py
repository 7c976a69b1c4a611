"""Detection power of `stfn monitor` on moving-digits: false alarms on clean batches and
detections of each kind of shift, at a batch size a user would monitor.

    python benchmarks/monitor_power.py [--batches 20] [--batch-size 500] [--dataset moving-digits]

The champion is this checkout's (`make run` first): `models:/stfn-<dataset>@champion` in mlflow/
and the reference statistics logged with it. Each batch is a new draw from the generator (a seed of
its own, 1000 on; the generator's other settings as params.yaml's), then, for each kind:
- clean: as drawn;
- validation split, test split: `batch-size` samples drawn at random from the champion's own
  dataset's split (data/raw/<dataset>: digit images the champion never trained on, drawn like its
  training data; the validation split is what the monitor is calibrated on, the test split checks it);
- gain: sensor zone-0 recalibrated to 1.5x its readings;
- offset: sensor zone-0 reading one training standard deviation higher;
- missing: 30 % of sensor zone-0's readings lost;
- darker: the frames 30 % darker (x 0.7, rounded, as a camera's exposure);
- 3 classes: only videos whose label is one of 3 classes (drawn per batch) - the traffic changed.
Each batch is checked twice with the same code as `stfn monitor` (stfn.monitoring.compare on the
champion's reference): as an unlabelled batch and as a labelled one (its labels and the
champion's accuracy on it). Writes docs/data/monitor_power.json (the committed snapshot the docs'
operating page is generated from; `by_batch_size`, one entry per size run, with the machine and
the date): per kind, the alarms out of the batches, which checks fired how often, and over the
clean batches the largest value each threshold was measured against (what params.yaml's
defaults are chosen from).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow' / 'mlflow.db'}")

import numpy as np  # noqa: E402
from common import machine, now, table  # noqa: E402, I001

from stfn import monitoring, tracking  # noqa: E402
from stfn.config import MovingDigitsParams, Paths, load_params  # noqa: E402
from stfn.data import contract  # noqa: E402
from stfn.data.moving_digits import make_moving_digits  # noqa: E402
from stfn.stages.monitor import champion_model, load_reference  # noqa: E402

KINDS = ("clean", "validation split", "test split", "gain", "offset", "missing", "darker", "3 classes")
UNSEEN = {"validation split": "val", "test split": "test"}
OUT = REPO / "docs" / "data" / "monitor_power.json"


def draw(p: MovingDigitsParams, seed: int, n: int, classes: list[int] | None = None):
    """`n` videos from the generator with `seed`: series (N, T, C) with NaN, frames, labels."""
    want = n * 4 if classes else n
    spec, samples, series_long, frames = make_moving_digits(
        p.model_copy(update={"n_train": want, "n_val": 1, "n_test": 1, "seed": seed})
    )
    names = spec.channel_names
    t = spec.series.steps
    series = series_long[names].to_numpy(np.float32).reshape(len(samples), t, len(names))
    labels = samples["label"].to_numpy(np.int64)
    keep = np.flatnonzero(np.isin(labels, classes))[:n] if classes else np.arange(n)
    return series[keep], np.asarray(frames[keep]), labels[keep], names


def splits(folder: Path) -> dict[str, tuple]:
    """The champion's dataset's validation and test splits: series (N, T, C), frames, labels."""
    spec = contract.load_spec(folder)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, spec.name)
    long = contract.read_parquet(folder, contract.SERIES_FILE, spec.name)
    frames = contract.open_frames(folder, spec)
    out = {}
    for split in UNSEEN.values():
        rows = np.flatnonzero(samples["split"].to_numpy() == split)
        series = contract.series_array(long, samples["sample_id"].iloc[rows], spec)
        out[split] = (series, np.asarray(frames[rows]), samples["label"].to_numpy(np.int64)[rows], spec.channel_names)
    return out


def shifted(kind: str, series, frames, ref: dict, rng: np.random.Generator):
    series, frames = series.copy(), frames.copy()
    if kind == "gain":
        series[:, :, 0] *= 1.5
    elif kind == "offset":
        series[:, :, 0] += ref["series"]["zone-0"]["std"]
    elif kind == "missing":
        series[:, :, 0][rng.random(series.shape[:2]) < 0.3] = np.nan
    elif kind == "darker":
        frames = np.rint(frames * 0.7).astype(frames.dtype)
    return series, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--dataset", default="moving-digits")
    a = ap.parse_args()
    params, paths = load_params(REPO / "params.yaml"), Paths(REPO)
    tracking.configure(paths.mlflow_dir)
    try:
        mv, model = champion_model(a.dataset)
        ref = load_reference(model, mv, a.dataset, None)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"no champion with reference statistics ({exc}): run `make run` first")
    predict = model.unwrap_python_model().predictor.predict
    thresholds = params.monitor
    p = params.prepare.moving_digits
    rng = np.random.default_rng(0)
    unseen = splits(paths.dataset_dir(a.dataset))
    rows = []
    for b in range(a.batches):
        base = draw(p, 1000 + b, a.batch_size)
        classes = sorted(rng.choice(10, 3, replace=False).tolist())
        concentrated = draw(p, 5000 + b, a.batch_size, classes)
        for kind in KINDS:
            series, frames, labels, names = concentrated if kind == "3 classes" else base
            if kind in UNSEEN:
                series, frames, labels, names = unseen[UNSEEN[kind]]
                pick = rng.choice(len(labels), min(a.batch_size, len(labels)), replace=False)
                series, frames, labels = series[pick], frames[pick], labels[pick]
            series, frames = shifted(kind, series, frames, ref, rng)
            probs = predict({"series": series, "frames": frames})
            predicted = probs.argmax(axis=1)
            lo_hi = {c: (ref["series"][c]["min"], ref["series"][c]["max"]) for c in names}
            common = dict(
                summaries=monitoring.sample_summaries(series, frames, names, ref["saturation"]),
                series_stats=monitoring.series_aggregates(series, names, lo_hi),
                predictions=predicted,
            )
            accuracy = float((predicted == labels).mean())
            unlabelled = monitoring.compare(ref, thresholds, **common)
            labelled = monitoring.compare(ref, thresholds, **common, labels=labels, metric_value=accuracy)
            rows.append(
                {
                    "batch": b,
                    "kind": kind,
                    "n": len(labels),
                    "accuracy": round(accuracy, 4),
                    "unlabelled": {"alarm": unlabelled["alarm"], "crossed": unlabelled["crossed"]},
                    "labelled": {"alarm": labelled["alarm"], "crossed": labelled["crossed"]},
                    "checks": {c["name"]: [c["statistic"], c["p_value"]] for c in labelled["checks"]},
                }
            )
        print(f"batch {b + 1}/{a.batches}: " + ", ".join(
            f"{r['kind']}={'A' if r['unlabelled']['alarm'] else '-'}{'A' if r['labelled']['alarm'] else '-'}"
            for r in rows[-len(KINDS):]), flush=True)  # fmt: skip
    summary = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        summary[kind] = {
            "batches": len(mine),
            "alarms_unlabelled": sum(r["unlabelled"]["alarm"] for r in mine),
            "alarms_labelled": sum(r["labelled"]["alarm"] for r in mine),
            "fired_unlabelled": dict(Counter(c for r in mine for c in r["unlabelled"]["crossed"]).most_common()),
            "fired_labelled": dict(Counter(c for r in mine for c in r["labelled"]["crossed"]).most_common()),
            "accuracy_median": statistics.median(r["accuracy"] for r in mine),
        }
    clean = [r for r in rows if r["kind"] == "clean"]

    def worst(prefix: str, p_values: bool = False) -> float:
        vals = [v[1 if p_values else 0] for r in clean for k, v in r["checks"].items() if k.startswith(prefix)]
        vals = [v for v in vals if v is not None]
        return (min(vals) if p_values else max(vals)) if vals else float("nan")

    ks = [v[0] for r in clean for k, v in r["checks"].items() if k.startswith(("series.", "frames."))]
    on_clean = {
        "max_ks_statistic": max(ks),
        "min_p_value": worst("", p_values=True),
        "max_tvd_predictions": worst("predictions"),
        "max_tvd_labels": worst("labels"),
        "max_missing_increase": worst("missing."),
        "max_out_of_range": worst("range."),
        "max_accuracy_drop": worst("quality."),
        "p_threshold": thresholds.alpha / len([v for v in clean[0]["checks"].values() if v[1] is not None]),
    }
    payload = {
        "dataset": a.dataset,
        "champion_version": str(mv.version),
        "batch_size": a.batch_size,
        "batches": a.batches,
        "thresholds": thresholds.model_dump(),
        "summary": summary,
        "clean_batches_worst": on_clean,
        "rows": rows,
        "machine": machine(),
        "date": now(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # one entry per batch size, the others kept
    before = json.loads(OUT.read_text()) if OUT.is_file() else {}
    before = before if "by_batch_size" in before else {"by_batch_size": {}}
    before["by_batch_size"][str(a.batch_size)] = payload
    OUT.write_text(json.dumps(before, indent=1) + "\n")
    print(
        table(
            f"detection on {a.batches} batches of {a.batch_size} per kind (champion v{mv.version})",
            [
                (
                    k,
                    f"{v['alarms_unlabelled']}/{v['batches']}",
                    f"{v['alarms_labelled']}/{v['batches']}",
                    ", ".join(f"{c} {n}" for c, n in list(v["fired_labelled"].items())[:3]),
                    f"{v['accuracy_median']:.3f}",
                )
                for k, v in summary.items()
            ],  # fmt: skip
            ("kind", "alarms (unlabelled)", "alarms (labelled)", "checks that fired (labelled)", "accuracy"),
        )
    )
    print("\nover the clean batches, the largest value of each figure:")
    for k, v in on_clean.items():
        print(f"  {k}: {v:.4g}")
    print(f"\nwritten to {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
