"""The ablation experiment: STFN and each ablation baseline (time_only, space_only, late_concat)
trained over several seeds on the same features and split, with the same training code; each a
child MLflow run under one parent; reports/ablation.json and a bar chart with error bars.

reports/ablation.json keeps one entry per spatial encoder (`encoders.cnn`, `encoders.patches`):
an ablation with `model.spatial_encoder=patches` replaces the patches' entry and keeps the CNN's,
so the two stand side by side (in the file and the chart) while they are of the same dataset and
metric."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from stfn import evaluation as ev
from stfn import plots, tracking
from stfn.config import Params, Paths
from stfn.efficiency import machine, now
from stfn.features import load_features
from stfn.fileio import write_json
from stfn.stages.evaluate import pointing_for, score_split
from stfn.training import fit

ABLATION_VARIANTS = ("stfn", "time_only", "space_only", "late_concat")


def ablate(
    params: Params,
    paths: Paths,
    seeds: list[int],
    variants: tuple[str, ...] = ABLATION_VARIANTS,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Train and score every variant over `seeds`; returns (and writes) the report."""
    name = paths.dataset_name(params.data.dataset)
    fs = load_features(paths.features_dir(name))
    metric = ev.PRIMARY_METRIC[fs.spec.task]
    parent = None
    if track:
        tracking.configure(paths.mlflow_dir)
        parent = tracking.start_run(
            name,
            paths.mlflow_dir,
            run_name=f"ablation-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"kind": "ablation", "dataset": name, "params_hash": params.digest()},
        )
        tracking.log_params(parent, {"seeds": seeds, "variants": list(variants), **params.model_dump(mode="json")})
    models: dict[str, dict[str, Any]] = {}
    try:
        for variant in variants:
            rows = []
            for seed in seeds:
                p = params.model_copy(update={"model": params.model.model_copy(update={"variant": variant})})
                result = fit(fs, p.model, p.train, seed, paths.ablation_dir(name, variant, seed))
                test, _, att = score_split(fs, result.model, "test")
                row = {
                    "variant": variant,
                    "seed": seed,
                    **test["metrics"],
                    "train_seconds": round(result.seconds, 1),
                    "n_parameters": sum(q.numel() for q in result.model.parameters()),
                }
                pointing = pointing_for(params, paths, fs, fs.rows("test"), att)
                if pointing is not None:
                    row["pointing"] = pointing
                rows.append(row)
                if parent:
                    child = tracking.start_run(
                        name,
                        paths.mlflow_dir,
                        run_name=f"{variant}-seed{seed}",
                        tags={"mlflow.parentRunId": parent, "kind": "ablation", "variant": variant},
                    )
                    tracking.log_params(child, {"variant": variant, "seed": seed})
                    tracking.log_metrics(
                        child, {f"test_{k}": v for k, v in row.items() if k not in ("variant", "seed")}
                    )
                    tracking.end_run(child)
                if on_result:
                    on_result(row)
            values = np.array([r[metric] for r in rows])
            models[variant] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "seeds": [float(v) for v in values],
                "runs": rows,
            }
    except BaseException:
        if parent:
            tracking.end_run(parent, "FAILED")
        raise
    encoder = params.model.spatial_encoder
    report = {"dataset": name, "metric": metric, "spatial_encoder": encoder, "seeds": seeds, "models": models}
    # where and when it was measured, with the figures (the docs' tables print it beside them)
    measured = {"machine": machine(), "date": now()}
    entry = {"seeds": seeds, "models": models, "model": params.model.model_dump(mode="json"), "mlflow_run_id": parent}
    encoders = {**_earlier_encoders(paths, name, metric), encoder: {**entry, **measured}}
    write_json(paths.ablation_file, {"dataset": name, "metric": metric, **measured, "encoders": encoders})
    chart = plots.plot_ablation({e: v["models"] for e, v in encoders.items()}, metric, paths.plots / "ablation.png")
    if parent:
        tracking.log_metrics(parent, {f"{v}_{metric}_mean": m["mean"] for v, m in models.items()})
        tracking.log_artifact(parent, paths.ablation_file, "ablation")
        tracking.log_artifact(parent, chart, "ablation")
        tracking.end_run(parent)
    report["mlflow_run_id"] = parent
    return report


def _earlier_encoders(paths: Paths, dataset: str, metric: str) -> dict[str, Any]:
    """The other encoders' entries of reports/ablation.json when it is of the same dataset and
    metric (a file of another dataset, or of the older one-encoder format, is replaced)."""
    try:
        earlier = json.loads(paths.ablation_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or (earlier.get("dataset"), earlier.get("metric")) != (dataset, metric):
        return {}
    return dict(earlier.get("encoders") or {})
