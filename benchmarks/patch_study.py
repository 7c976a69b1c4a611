"""Spacetime patches on the default task: screen the levers known to help vision
transformers on small data, then confirm the kept configuration over seeds against the CNN.

    python benchmarks/patch_study.py screen [--n-train 4000] [--epochs 5] [--only NAME ...]
    python benchmarks/patch_study.py confirm --configs NAME ... [--seeds 1 2 3] [--n-train 12000]
        [--reference cnn] [--key confirm]

`screen` trains each lever of LEVERS once (seed 1) on a smaller variant of the default task (the
same videos, 4 digits, 8 frames, 32 steps, D 64; fewer training videos, n_train // 8 for val and
test) and prints test accuracy, pointing and training samples/s; `confirm` trains the reference
(the CNN unless `--reference` names another) and each named configuration on the default task for
each seed, in turn (ref, A, B, ref, A, B, ...), so each throughput ratio comes from runs minutes
apart. Both write their figures into docs/data/patch_study.json (the committed snapshot the docs'
model page is generated from) under their mode (or `--key`), with the machine and the date.
The levers named "vivit ..." put vit-pytorch's ViViT in our encoder's place (vivit_branch.py):
`confirm --configs "vivit hybrid" --reference "cnn stem depth 1 ls" --key vivit` holds ours against ViViT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from common import REPO, machine, now, project, table  # noqa: I001
from vivit_branch import vivit_inside_stfn

from stfn.config import Paths, load_params

# the plain patch encoder (a linear embedding, two blocks), every setting explicit
PLAIN = {
    "spatial_encoder": "patches",
    "patch": 8,
    "tubelet": 1,
    "patch_depth": 2,
    "patch_stem": "linear",
    "patch_overlap": False,
    "layer_scale": 0.0,
    "drop_path": 0.0,
}
STEM, LS, OVERLAP = {"patch_stem": "conv"}, {"layer_scale": 1e-4}, {"patch_overlap": True}
CONV_OVERLAP_1 = {**STEM, **LS, **OVERLAP, "patch_depth": 1}
HYBRID = {"patch_stem": "cnn", **LS, "patch_depth": 1}  # params.yaml's patches (docs, "The model")


def lever(train: dict | None = None, **model) -> tuple[dict, dict]:
    return {**PLAIN, **model}, train or {}


# each lever: (model settings, train overrides), on top of the repo's params.yaml
LEVERS: dict[str, tuple[dict, dict]] = {
    "cnn": ({"spatial_encoder": "cnn"}, {}),
    "patches": lever(),
    "patches p4": lever(patch=4),
    "patches ls 1e-4": lever(**LS),
    "conv stem": lever(**STEM),
    "conv stem t2": lever(**STEM, tubelet=2),
    "conv stem depth 1": lever(**STEM, patch_depth=1),
    "conv stem ls 1e-4": lever(**STEM, **LS),
    "conv stem t2 ls 1e-4": lever(**STEM, **LS, tubelet=2),
    "conv stem depth 1 ls 1e-4": lever(**STEM, **LS, patch_depth=1),
    "conv stem ls overlap": lever(**STEM, **LS, **OVERLAP),
    "conv stem t2 ls overlap": lever(**STEM, **LS, **OVERLAP, tubelet=2),
    "conv stem depth 1 ls overlap": lever(**CONV_OVERLAP_1),
    "conv stem t2 depth 1 ls overlap": lever(**CONV_OVERLAP_1, tubelet=2),
    "cnn stem depth 1 ls": lever(**HYBRID),
    "cnn stem t2 depth 1 ls": lever(patch_stem="cnn", patch_depth=1, tubelet=2, **LS),
    "hybrid wd 0.05": lever({"weight_decay": 0.05}, **HYBRID),
    "hybrid drop_path 0.1": lever(**HYBRID, drop_path=0.1),
    "hybrid warmup 0.3": lever({"warmup_fraction": 0.3}, **HYBRID),
    "hybrid lr 3e-3": lever({"lr": 3e-3}, **HYBRID),
    "hybrid 2 blocks": lever(**{**HYBRID, "patch_depth": 2}),
    # vit-pytorch's ViViT in our encoder's place, behind the same stem at the same sizes (item 3;
    # benchmarks/vivit_branch.py): `model.layer_scale` does not reach it (ViViT has none)
    "vivit hybrid": lever(**HYBRID),
    "vivit hybrid t2": lever(**HYBRID, tubelet=2),
}
VIVIT = {"vivit hybrid", "vivit hybrid t2"}
OUT = REPO / "docs" / "data" / "patch_study.json"


def prepared(name: str, n_train: int, seed: int) -> tuple:
    from stfn.features import load_features
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare

    root = project(name, n_train, seed=seed)
    params, paths = load_params(root / "params.yaml"), Paths(root)
    prepare(params, paths)
    featurize(params, paths)
    return params, paths, load_features(paths.features_dir(params.data.dataset))


def train_one(setup: tuple, lever: str, seed: int, epochs: int, out: Path) -> dict:
    from stfn.stages.evaluate import pointing_for, score_split
    from stfn.training import fit

    params, paths, fs = setup
    model_over, train_over = LEVERS[lever]
    mp = params.model.model_copy(update=model_over)
    tp = params.train.model_copy(update={"epochs": epochs, "patience": epochs, **train_over})
    t0 = time.perf_counter()
    with vivit_inside_stfn() if lever in VIVIT else contextlib.nullcontext():
        result = fit(fs, mp, tp, seed, out, resume=False)
    seconds = time.perf_counter() - t0
    test, _, attention = score_split(fs, result.model, "test")
    pointing = pointing_for(params, paths, fs, fs.rows("test"), attention)
    rates = [row["samples_per_s"] for row in result.history]
    row = {
        "lever": lever,
        "seed": seed,
        "epochs": len(result.history),
        "test_accuracy": round(float(test["metrics"]["accuracy"]), 4),
        "pointing": None if pointing is None else round(pointing, 4),
        "samples_per_s": round(statistics.median(rates), 1),
        "fit_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in result.model.parameters()),
    }
    print(json.dumps(row), flush=True)
    return row


def save(mode: str, payload: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    data[mode] = {**payload, "machine": machine(), "date": now()}
    OUT.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("screen", "confirm"))
    ap.add_argument("--n-train", type=int, default=None, help="training videos (screen 4000, confirm 12000)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="screen: these levers only")
    ap.add_argument("--configs", nargs="*", default=None, help="confirm: the patch configurations besides the CNN")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--reference", default="cnn", help="confirm: the configuration the others are timed against")
    ap.add_argument("--key", default=None, help="the entry of docs/data/patch_study.json to write (default: the mode)")
    a = ap.parse_args()
    unknown = [x for x in (a.only or []) + (a.configs or []) if x not in LEVERS]
    if unknown:
        sys.exit(f"unknown lever(s) {unknown}; known: {list(LEVERS)}")
    if a.mode == "screen":
        n_train = a.n_train or 4000
        setup = prepared("patch-screen", n_train, 42)
        rows = [train_one(setup, lever, 1, a.epochs, setup[1].root / "runs" / lever) for lever in (a.only or LEVERS)]
        # merged with the levers screened before at the same size (one lever, one row)
        before = json.loads(OUT.read_text()).get("screen", {}) if OUT.is_file() else {}
        if (before.get("n_train"), before.get("epochs")) == (n_train, a.epochs):
            rows = [r for r in before["rows"] if r["lever"] not in {x["lever"] for x in rows}] + rows
        payload = {"n_train": n_train, "epochs": a.epochs, "seed": 1, "rows": rows}
        print(
            table(
                f"screen: {n_train} training videos, {a.epochs} epochs, seed 1",
                [tuple(r.values()) for r in rows],
                tuple(rows[0]),
            )
        )
    else:
        n_train = a.n_train or 12000
        setup = prepared("patch-confirm", n_train, 42)
        order = [a.reference, *(a.configs or [])]
        rows = [
            train_one(setup, lever, seed, a.epochs, setup[1].root / "runs" / f"{lever}-{seed}")
            for seed in a.seeds
            for lever in order
        ]
        summary = {}
        for lever in order:
            mine = [r for r in rows if r["lever"] == lever]
            cnn = [r for r in rows if r["lever"] == a.reference]
            accs = [r["test_accuracy"] for r in mine]
            summary[lever] = {
                "test_accuracy_mean": round(statistics.mean(accs), 4),
                "test_accuracy_min": min(accs),
                "pointing_mean": round(statistics.mean(r["pointing"] for r in mine), 4),
                # the reference's samples/s over this configuration's, seed by seed (runs in turn)
                "time_vs_reference": round(
                    statistics.median(c["samples_per_s"] / m["samples_per_s"] for c, m in zip(cnn, mine, strict=True)),
                    3,
                ),
            }
        payload = {
            "n_train": n_train,
            "epochs": a.epochs,
            "seeds": a.seeds,
            "reference": a.reference,
            "rows": rows,
            "summary": summary,
        }
        print(
            table(
                "confirm: the default task",
                [(k, *v.values()) for k, v in summary.items()],
                ("config", *next(iter(summary.values()))),
            )
        )
    save(a.key or a.mode, payload)
    print(f"\nwritten to {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
