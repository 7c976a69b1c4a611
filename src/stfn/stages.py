"""One function per pipeline stage: read inputs, call the pure code, write outputs.

The Prefect flow (`flows/`), the DVC pipeline (`dvc.yaml`, via `python -m stfn stage NAME`) and
the CLI all call these. Stages pass files, not tensors; every output is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stfn import data as data_mod
from stfn import progress
from stfn.config import Params, Paths
from stfn.errors import DataValidationError, Failure
from stfn.fileio import dir_md5, write_json

log = logging.getLogger(__name__)

BUILTIN = {"moving-digits"}


def dataset_name(params: Params, paths: Paths) -> str:
    """The dataset's name: the folder name for a path, else the configured name."""
    folder = paths.dataset_dir(params.data.dataset)
    return folder.name


# --------------------------------------------------------------------------------------------- prepare


def prepare(params: Params, paths: Paths, force: bool = False) -> Path:
    """Make sure the dataset exists: generate a built-in one (again, when its parameters changed),
    or check that a user's folder is there."""
    name = params.data.dataset
    folder = paths.dataset_dir(name)
    if name not in BUILTIN:
        if not (folder / data_mod.SPEC_FILE).is_file():
            raise DataValidationError(
                folder.name,
                [
                    Failure(
                        str(folder),
                        None,
                        "a dataset folder in the contract",
                        f"not found; built-in datasets: {sorted(BUILTIN)}, or bring your own with `stfn ingest PATH`",
                    )
                ],
            )
        return folder
    p = params.prepare.moving_digits
    wanted = {"generator": name, "params": p.model_dump(mode="json")}
    if not force and (folder / data_mod.SPEC_FILE).is_file():
        try:
            current = data_mod.load_spec(folder).source
        except DataValidationError:
            current = None
        if current == wanted:
            log.info("dataset %s is up to date at %s", name, folder)
            return folder
    log.info("generating %s (%d train / %d val / %d test samples)", name, p.n_train, p.n_val, p.n_test)
    with progress.bar("generating", p.n_train + p.n_val + p.n_test) as update:
        done: dict[str, int] = {}

        def generated(split: str, n: int, _total: int) -> None:
            done[split] = n
            update(sum(done.values()), info=f"{name}: {split} samples")

        spec, samples, series, frames = data_mod.make_moving_digits(p, name, generated)
        update(info=f"{name}: writing {folder}")
        return data_mod.write_dataset(folder, spec, samples, series, frames)


def _matches_dvc_yaml(params: Params, paths: Paths) -> bool:
    """Do these parameters equal `params.yaml` (what `dvc.yaml`'s stages run with)?"""
    from stfn.config import load_params

    return params == load_params(paths.root / "params.yaml")


def record_versions(params: Params, paths: Paths) -> str:
    """After a flow run in a DVC repo with the parameters of `params.yaml`: `dvc commit` the
    validate..evaluate outputs (made by the same functions `dvc repro` calls) and push them."""
    from stfn import versioning

    if not versioning.is_dvc_repo(paths.root):
        return "skipped (not a DVC repo)"
    if not _matches_dvc_yaml(params, paths):
        return "skipped (run parameters differ from params.yaml: outputs not recorded in dvc.lock)"
    result = versioning.commit(paths.root, ["validate", "featurize", "train", "evaluate"])
    return "outputs recorded in dvc.lock" + (" and pushed to the DVC remote" if result["pushed"] else "")


def refresh_data(params: Params, paths: Paths) -> str:
    """Before a scheduled retrain: bring the newest recorded data version into the workspace.
    A built-in dataset is reproduced by `prepare` (`dvc repro prepare`); an ingested or imported
    one is pulled from the DVC remote when its `.dvc` file is there."""
    from stfn import versioning

    if not versioning.is_dvc_initialised(paths.root):
        return "not a DVC repo: using the workspace data"
    if params.data.dataset in BUILTIN:
        return "built-in dataset: `dvc repro prepare` brings it up to date"
    tracked = paths.dataset_dir(params.data.dataset).with_suffix(".dvc")
    if not tracked.is_file():
        return f"{tracked.name} not found: using the workspace data"
    return versioning.pull(paths.root, str(tracked.relative_to(paths.root)))


def prepare_versioned(params: Params, paths: Paths) -> dict[str, Any]:
    """`prepare`, through DVC when it can be: in a DVC repo, for the built-in dataset that
    `dvc.yaml` declares with the parameters of `params.yaml`, run `dvc repro prepare` (it skips
    when nothing changed) and push to the default remote; otherwise call `prepare` directly."""
    from stfn import versioning
    from stfn.config import load_params

    info: dict[str, Any] = {"dvc": "skipped (not a DVC repo)"}
    if versioning.is_dvc_repo(paths.root):
        declared = load_params(paths.root / "params.yaml")
        same = params.data.dataset == declared.data.dataset == "moving-digits" and params.prepare == declared.prepare
        if same:
            result = versioning.reproduce(paths.root, "prepare")
            info["dvc"] = result["output"] + (" (pushed to the DVC remote)" if result["pushed"] else "")
            info["dvc_md5"] = versioning.locked_md5(paths.root, "prepare", "data/raw/moving-digits")
            log.info("dvc: %s", info["dvc"])
        elif params.data.dataset not in BUILTIN:
            tracked = paths.dataset_dir(params.data.dataset).with_suffix(".dvc")
            info["dvc"] = (
                f"data tracked by {tracked.relative_to(paths.root)}"
                if tracked.is_file() and tracked.is_relative_to(paths.root)
                else "data not tracked by DVC (stfn ingest / stfn import track it)"
            )
        else:
            info["dvc"] = "skipped (prepare parameters differ from params.yaml)"
    # after `dvc repro prepare` the dataset is there, made by the same `prepare`: not checked again
    info["folder"] = str(paths.dataset_dir(params.data.dataset) if "dvc_md5" in info else prepare(params, paths))
    return info


# --------------------------------------------------------------------------------------------- validate


def validate(params: Params, paths: Paths, folder: Path | None = None) -> dict[str, Any]:
    """Validate the dataset (GX); writes reports/validation/<name>.json and .html."""
    folder = folder or paths.dataset_dir(params.data.dataset)
    summary = validate_folder(folder, folder.name, params.data.max_missing_ratio, paths)
    return {**summary, "data_md5": dir_md5(folder)}


def validate_folder(folder: Path, name: str, max_missing_ratio: float, paths: Paths) -> dict[str, Any]:
    """Validate a dataset folder with a progress bar; the report goes to
    reports/validation/<name>.json (+ .html), or to .stfn/refused/ when the data is refused."""
    from stfn.validation import STEPS, validate_dataset

    with progress.bar("validating", STEPS) as update:
        steps = iter(range(STEPS))
        report = validate_dataset(
            folder,
            max_missing_ratio,
            paths.validation_report(name),
            lambda msg: update(next(steps, STEPS - 1), info=f"{name}: {msg}"),
            refused_report_path=paths.refused_report(name),
        )
    return {**report.summary(), "report": str(paths.validation_report(name))}


# --------------------------------------------------------------------------------------------- featurize


def featurize(params: Params, paths: Paths, data_md5: str | None = None) -> Path:
    """Fit normalisation on train, write memory-mappable float32 arrays. Skipped when the
    dataset and the split parameters are unchanged since the last run. `data_md5`: the dataset's
    hash when the caller has it already (validation computes it), so it is not hashed twice."""
    from stfn.features import build_features

    folder = paths.dataset_dir(params.data.dataset)
    out = paths.features_dir(folder.name)
    inputs = {
        "data_md5": data_md5 or dir_md5(folder),
        "val_fraction": params.data.val_fraction,
        "test_fraction": params.data.test_fraction,
        "series_norm": params.data.series_norm,
        "seed": params.seed,
    }
    stamp = out / "inputs.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == inputs:
        log.info("features for %s are up to date", folder.name)
        return out
    with progress.bar("featurizing") as update:
        build_features(
            folder,
            out,
            params.data.val_fraction,
            params.data.test_fraction,
            params.seed,
            lambda done, total: update(done, total, info=f"{folder.name}: samples"),
            params.data.series_norm,
        )
    write_json(stamp, inputs)
    return out


# --------------------------------------------------------------------------------------------- train


def train(
    params: Params,
    paths: Paths,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Train STFN on the features; writes models/<name>/model.pt (best), last.pt, history.json.
    With `train.nproc` > 1 (and not already inside a torchrun group) it launches torchrun with
    that many DDP processes and reads their summary back (the epochs replayed to `on_epoch`)."""
    from stfn.efficiency import flops_per_sample, peak_memory_mb
    from stfn.features import load_features
    from stfn.training import fit

    if params.train.nproc > 1 and not distributed:
        return _train_ddp(params, paths, on_epoch)
    name = dataset_name(params, paths)
    fs = load_features(paths.features_dir(name))
    out = paths.model_dir(name)
    epochs, steps = params.train.epochs, math.ceil(len(fs.rows("train")) / params.train.batch_size)
    with progress.bar("training", epochs * steps) as update:
        seen: dict[str, Any] = {"epoch": 0, "metrics": ""}

        def batch_done(b: int, n: int) -> None:
            update(seen["epoch"] * n + b, info=f"epoch {seen['epoch'] + 1}/{epochs} {seen['metrics']}")
            if on_batch:
                on_batch(b, n)

        def epoch_done(row: dict[str, float]) -> None:
            seen["epoch"] = int(row["epoch"])
            shown = [k for k in row if k == "train_loss" or (k.startswith("val_") and k != "val_loss")]
            seen["metrics"] = " ".join(f"{k}={row[k]:.4f}" for k in shown)
            update(seen["epoch"] * steps, info=f"epoch {seen['epoch']}/{epochs} {seen['metrics']}")
            if on_epoch:
                on_epoch(row)

        result = fit(fs, params.model, params.train, params.seed, out, on_epoch=epoch_done, on_batch=batch_done)
        update(info=f"{len(result.history)} epochs, best {result.best_epoch}: {seen['metrics']}")
    flops = flops_per_sample(result.config)
    rates = [h["samples_per_s"] for h in result.history]
    efficiency = {
        "n_parameters": int(flops["n_parameters"]),
        "flops_forward_per_sample": flops["flops_forward"],
        "flops_train_step_per_sample": flops["flops_train_step"],
        "train_samples_per_s": float(np.median(rates)) if rates else 0.0,
        "peak_memory_mb": round(peak_memory_mb(result.device), 1),
    }
    summary = {
        "checkpoint": str(out / "model.pt"),
        "best_epoch": result.best_epoch,
        "best_val": result.best_val,
        "epochs_run": len(result.history),
        "resumed_from_epoch": result.resumed_from_epoch,  # > 0: continued an interrupted run's checkpoint
        "train_seconds": round(result.seconds, 2),
        "device": result.device,
        "history": result.history,
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        "efficiency": efficiency,
    }
    summary["world_size"] = result.world_size
    summary["gpu_path"] = result.gpu_path
    if not distributed or _rank() == 0:
        write_json(out / "history.json", summary)
    return summary


def _rank() -> int:
    from stfn.training import distributed

    return distributed()[0]


def _train_ddp(params: Params, paths: Paths, on_epoch: Callable[[dict[str, float]], None] | None) -> dict[str, Any]:
    """torchrun with train.nproc processes; a failure names the log."""
    import json as _json
    import subprocess
    import tempfile

    from stfn.ddp import launch_command

    with tempfile.TemporaryDirectory(prefix="stfn-ddp-") as tmp:
        resolved, summary = Path(tmp) / "params.json", Path(tmp) / "summary.json"
        resolved.write_text(_json.dumps(params.model_dump(mode="json")))
        cmd = launch_command(params.train.nproc, paths.root, resolved, summary)
        log.info("training with %d DDP processes: %s", params.train.nproc, " ".join(cmd))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with progress.bar("training") as update:
            update(info=f"torchrun, {params.train.nproc} processes")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=paths.root)
        if proc.returncode != 0 or not summary.is_file():
            n = params.train.nproc
            raise RuntimeError(f"DDP training (torchrun, {n} processes) failed:\n{proc.stderr[-3000:]}")
        result = _json.loads(summary.read_text())
    if on_epoch:
        for row in result["history"]:
            on_epoch(row)
    return result


# --------------------------------------------------------------------------------------------- evaluate


def model_label(params: Params) -> str:
    m = params.model
    if m.variant == "stfn":
        return f"stfn ({m.spatial_encoder}+{m.temporal_encoder}, {m.alignment})"
    return f"{m.variant} (ablation baseline)"


def score_split(
    fs: Any, model: Any, split: str, on_batch: Callable[[int, int], None] | None = None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Metrics of `model` on one split of a feature set, with its raw outputs and attention."""
    from stfn import evaluation as ev
    from stfn.training import predict_arrays

    rows = fs.rows(split)
    out, att = predict_arrays(model, fs.series[rows], fs.frames[rows], on_batch=on_batch)
    y = fs.labels[rows]
    if fs.spec.task == "classification":
        probs = ev.softmax(out)
        result = ev.classification_metrics(y, probs, fs.spec.target.classes or [])
        cal = ev.calibration(y, probs)
        result["metrics"].update(ece=cal["ece"], brier=cal["brier"])
        result["reliability"] = cal["reliability"]
    else:
        st = fs.stats
        result = ev.regression_metrics(
            y * st["target_std"] + st["target_mean"], out[:, 0] * st["target_std"] + st["target_mean"]
        )
    return result, out, att


def pointing_for(params: Params, paths: Paths, fs: Any, rows: np.ndarray, attention: np.ndarray | None) -> float | None:
    """The pointing score when the dataset records where its trigger is (moving-digits)."""
    from stfn import evaluation as ev

    if attention is None:
        return None
    meta = data_mod.read_parquet(paths.dataset_dir(params.data.dataset), data_mod.SAMPLES_FILE, fs.spec.name)
    if not {"trigger_frame", "trigger_row", "trigger_col"} <= set(meta.columns):
        return None
    m = meta.iloc[rows]
    return ev.pointing_score(
        attention,
        m["trigger_frame"].to_numpy(),
        m["trigger_row"].to_numpy(),
        m["trigger_col"].to_numpy(),
        (fs.spec.frames.height, fs.spec.frames.width),
        tubelet=fs.spec.frames.count // attention.shape[1],
    )


def regression_baselines_for(params: Params, paths: Paths, fs: Any) -> dict[str, dict[str, Any]]:
    """Persistence, climatology and ridge (those the dataset allows) scored on the same val and
    test rows as the model: {name: {"test": metrics, "val": metrics, "note": how}}."""
    from stfn import evaluation as ev
    from stfn.baselines import regression_baselines

    folder = paths.dataset_dir(params.data.dataset)
    samples = data_mod.read_parquet(folder, data_mod.SAMPLES_FILE, fs.spec.name)
    series = data_mod.series_array(
        data_mod.read_parquet(folder, data_mod.SERIES_FILE, fs.spec.name), samples["sample_id"], fs.spec
    )
    split = np.empty(len(samples), dtype=object)
    split[fs.index["row"].to_numpy()] = fs.index["split"].to_numpy()  # the split the model was trained on
    labels = samples["label"].to_numpy(np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, b in regression_baselines(fs.spec, samples, series, split).items():
        scores = {}
        for part in ("val", "test"):
            rows = np.flatnonzero((split == part) & np.isfinite(b["pred"]))
            scores[part] = ev.regression_metrics(labels[rows], b["pred"][rows])["metrics"]
        out[name] = {**scores, "note": b["note"]}
    return out


def evaluate(params: Params, paths: Paths) -> dict[str, Any]:
    """Evaluate the best checkpoint on val and test; writes reports/metrics.json and plots."""
    from stfn.features import load_features
    from stfn.training import load_checkpoint

    name = dataset_name(params, paths)
    fs = load_features(paths.features_dir(name))
    model_dir = paths.model_dir(name)
    model, _ = load_checkpoint(model_dir / "model.pt")
    history = json.loads((model_dir / "history.json").read_text())
    results: dict[str, Any] = {}
    outputs: dict[str, tuple] = {}
    sizes = {split: len(fs.rows(split)) for split in ("val", "test")}
    with progress.bar("evaluating", sum(sizes.values())) as update:
        for split, offset in (("val", 0), ("test", sizes["val"])):
            results[split], *outputs[split] = score_split(
                fs, model, split, lambda done, _n, o=offset, s=split: update(o + done, info=f"{name}: {s} split")
            )
        update(info=f"{name}: plots and reports/metrics.json")
        return _evaluation_outputs(params, paths, name, fs, history, results, outputs)


def _evaluation_outputs(
    params: Params,
    paths: Paths,
    name: str,
    fs: Any,
    history: dict[str, Any],
    results: dict[str, Any],
    outputs: dict[str, tuple],
) -> dict[str, Any]:
    """The plots, reports/per_class.json and reports/metrics.json of an evaluation."""
    from stfn import evaluation as ev

    spec, plots = fs.spec, paths.reports / "plots"
    test_out, test_att = outputs["test"]
    test_rows = fs.rows("test")
    files = {"training_curves": ev.plot_training_curves(history["history"], plots / "training_curves.png")}
    if spec.task == "classification":
        files["confusion_matrix"] = ev.plot_confusion_matrix(
            results["test"]["confusion_matrix"], spec.target.classes or [], plots / "confusion_matrix.png"
        )
        write_json(paths.reports / "per_class.json", results["test"]["per_class"])
        files["reliability"] = ev.plot_reliability(
            results["test"]["reliability"], results["test"]["metrics"]["ece"], plots / "reliability.png"
        )
        meta = data_mod.read_parquet(paths.dataset_dir(params.data.dataset), data_mod.SAMPLES_FILE, name)
        if test_att is not None and {"trigger_frame", "trigger_row", "trigger_col"} <= set(
            meta.columns
        ):  # moving-digits metadata
            m = meta.iloc[test_rows]
            results["test"]["metrics"]["pointing"] = ev.pointing_score(
                test_att,
                m["trigger_frame"].to_numpy(),
                m["trigger_row"].to_numpy(),
                m["trigger_col"].to_numpy(),
                (spec.frames.height, spec.frames.width),
            )
    else:
        st = fs.stats
        baselines = regression_baselines_for(params, paths, fs)
        files["predicted_vs_actual"] = ev.plot_predicted_vs_actual(
            fs.labels[test_rows] * st["target_std"] + st["target_mean"],
            test_out[:, 0] * st["target_std"] + st["target_mean"],
            spec.target.unit,
            plots / "predicted_vs_actual.png",
        )
    show = min(4, len(test_rows))
    if spec.task == "classification":
        names = spec.target.classes or []
        truth = [names[int(fs.labels[r])] for r in test_rows[:show]]
        pred = [names[int(k)] for k in test_out[:show].argmax(-1)]
    else:  # back to the target's unit
        st, unit = fs.stats, spec.target.unit or ""
        truth = [f"{fs.labels[r] * st['target_std'] + st['target_mean']:.2f} {unit}" for r in test_rows[:show]]
        pred = [f"{v * st['target_std'] + st['target_mean']:.2f} {unit}" for v in test_out[:show, 0]]
    titles = [
        f"{fs.index['sample_id'].iloc[r]}\ny={t} pred={p}"
        for r, t, p in zip(test_rows[:show], truth, pred, strict=True)
    ]
    files["input_samples"] = ev.plot_samples(
        np.asarray(fs.frames[test_rows[:3]]),
        np.asarray(fs.series[test_rows[:3]]),
        list(spec.frames.steps),
        spec.channel_names,
        titles[:3],
        plots / "input_samples.png",
    )
    if test_att is not None:
        per_frame = np.repeat(test_att[:show], spec.frames.count // test_att.shape[1], axis=1)  # tubelets
        files["attention"] = ev.plot_attention(
            np.asarray(fs.frames[test_rows[:show]]), per_frame, titles, plots / "attention.png"
        )
    metrics = {
        "dataset": name,
        "task": spec.task,
        "model": model_label(params),
        "primary_metric": ev.PRIMARY_METRIC[spec.task],
        "test": results["test"]["metrics"],
        "val": results["val"]["metrics"],
        "n_train": int(len(fs.rows("train"))),
        "n_test": int(len(test_rows)),
        "train_seconds": history["train_seconds"],
        "efficiency": history.get("efficiency", {}),
        **({"baselines": baselines} if spec.task == "regression" else {}),
        "mlflow_run_id": None,
        "registered_version": None,
        "promoted": False,
    }
    write_json(paths.metrics_file, metrics)
    return {"metrics": metrics, "plots": {k: str(v) for k, v in files.items()}}


# --------------------------------------------------------------------------------------------- tracking


def open_run(
    params: Params, paths: Paths, flow_run_id: str | None, data_md5: str, dvc_md5: str | None = None
) -> dict[str, Any]:
    """Start the MLflow run of one pipeline run; log params, params.yaml and lineage tags."""
    from stfn import tracking

    uri = tracking.configure(paths.mlflow_dir, params.tracking.retry_seconds)
    tracking.lock_kind()  # refuse now, not at the gate after training, when promotion cannot be serialised
    name = dataset_name(params, paths)
    lineage = {
        "git_sha": tracking.git_sha(paths.root),
        "data_md5": data_md5,
        "params_hash": params.digest(),
        "prefect_flow_run_id": flow_run_id or "none",
        "dataset": name,
    }
    if dvc_md5:
        lineage["dvc_md5"] = dvc_md5  # the data version as `dvc.lock` records it
    run_id = tracking.start_run(
        name, paths.mlflow_dir, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", tags=lineage
    )
    tracking.log_params(run_id, params.model_dump(mode="json"))
    folder = paths.dataset_dir(params.data.dataset)
    samples = data_mod.read_parquet(folder, data_mod.SAMPLES_FILE, name)
    tracking.log_dataset(run_id, name, folder, data_md5, samples)
    if (paths.root / "params.yaml").is_file():
        tracking.log_artifact(run_id, paths.root / "params.yaml")
    return {
        "run_id": run_id,
        "tracking_uri": tracking.scrub_uri(uri),
        "experiment_id": tracking.experiment_id(name, paths.mlflow_dir),
        "lineage": lineage,
    }


def log_evaluation(
    run_id: str,
    params: Params,
    paths: Paths,
    evaluation: dict[str, Any],
    trained: dict[str, Any],
    validation: dict[str, Any] | None,
) -> None:
    from stfn import tracking

    m = evaluation["metrics"]
    tracking.log_metrics(run_id, {f"test_{k}": v for k, v in m["test"].items()})
    tracking.log_metrics(run_id, {f"best_val_{k}": v for k, v in m["val"].items()})  # val_* are per-epoch curves
    for base, scores in m.get("baselines", {}).items():  # e.g. baseline_ridge_test_mae
        tracking.log_metrics(run_id, {f"baseline_{base}_test_{k}": v for k, v in scores["test"].items()})
    tracking.log_metrics(
        run_id,
        {
            "train_seconds": trained["train_seconds"],
            "best_epoch": trained["best_epoch"],
            **trained.get("efficiency", {"n_parameters": trained["n_parameters"]}),
        },
    )
    for path in evaluation["plots"].values():
        tracking.log_artifact(run_id, Path(path), "plots")
    name = dataset_name(params, paths)
    for extra in (paths.reports / "per_class.json", paths.model_dir(name) / "history.json"):
        if extra.is_file():
            tracking.log_artifact(run_id, extra, "reports")
    if validation:
        report = Path(validation["report"])
        for f in (report, report.with_suffix(".html")):
            if f.is_file():
                tracking.log_artifact(run_id, f, "validation")


def test_set_md5(fs: Any, data_md5: str) -> str:
    """Identity of the held-out data a test metric was computed on: the data version and the
    test samples' ids (a new data version or another split gives another identity)."""
    import hashlib

    ids = fs.index.loc[fs.index["split"] == "test", "sample_id"].astype(str)
    return hashlib.md5((data_md5 + "\n" + "\n".join(ids)).encode()).hexdigest()


def champion_on_current_test_set(
    registered: str, version: str, metric: str, test_set: str, folder: Path, fs: Any
) -> tuple[float | None, str, str | None]:
    """The champion's `metric` on the *current* test set: its recorded value when it was
    computed on this same test set, else re-evaluated now (never compare numbers computed on
    different data). Returns (value, how it was obtained, the champion's version); (None, "",
    None) when there is no other champion."""
    from stfn import tracking
    from stfn.predict import score_model

    current = tracking.champion(registered)
    if current is None or str(current.version) == str(version):
        return None, "", None
    if (current.tags or {}).get("test_set_md5") == test_set:
        recorded = (current.tags or {}).get(f"test_{metric}")
        if recorded is not None:
            return float(recorded), "recorded on this same test set", str(current.version)
    log.info("re-evaluating champion v%s on the current test split", current.version)
    scores = score_model(f"models:/{registered}/{current.version}", folder, fs.rows("test"))
    tracking.set_model_version_tags(
        registered, str(version), {f"champion_v{current.version}_current_test_{metric}": scores[metric]}
    )
    how = f"champion re-evaluated on the current test split ({len(fs.rows('test'))} samples)"
    return float(scores[metric]), how, str(current.version)


def register(
    params: Params, paths: Paths, run_id: str, evaluation: dict[str, Any], lineage: dict[str, str]
) -> dict[str, Any]:
    """Log the model, register it as `stfn-<dataset>` (alias challenger), run the promotion gate,
    and record the outcome in reports/metrics.json."""
    from stfn import tracking
    from stfn.features import load_features

    name = dataset_name(params, paths)
    fs = load_features(paths.features_dir(name))
    rows = fs.rows("test")[:2]
    folder = paths.dataset_dir(params.data.dataset)
    ids = fs.index["sample_id"].iloc[rows]  # features keep samples.parquet's row order
    # only the example's rows of the (long) series table
    series_long = data_mod.read_parquet(folder, data_mod.SERIES_FILE, name, filters=[("sample_id", "in", list(ids))])
    example = {
        "series": data_mod.series_array(series_long, ids, fs.spec),
        "frames": np.asarray(data_mod.open_frames(folder, fs.spec)[rows]),
    }
    model_uri = tracking.log_model(run_id, paths.model_dir(name) / "model.pt", fs.meta, example)
    m = evaluation["metrics"]
    metric = m["primary_metric"]
    value = m["test"][metric]
    test_set = test_set_md5(fs, lineage.get("data_md5", ""))
    tags = {**lineage, "test_" + metric: value, "model_uri": model_uri, "test_set_md5": test_set}
    registered = tracking.model_name(name)
    version = tracking.register(model_uri, registered, run_id, tags)
    champion_value, basis, measured = champion_on_current_test_set(registered, version, metric, test_set, folder, fs)
    decision = tracking.promote_if_better(
        registered, version, metric, value, params.registry.min_improvement, champion_value, basis, measured
    )
    tracking.set_tags(
        run_id,
        {
            "registered_model": registered,
            "registered_version": version,
            "decision": "promoted" if decision.promoted else "rejected",
            "decision_reason": decision.reason,
        },
    )
    m.update({"mlflow_run_id": run_id, "registered_version": int(version), "promoted": decision.promoted})
    write_json(paths.metrics_file, m)
    return {
        "model_uri": model_uri,
        "registered_model": registered,
        "version": version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "champion_before": decision.champion_version,
        "champion_value_before": decision.champion_value,
    }


# --------------------------------------------------------------------------------------------- ablate

ABLATION_VARIANTS = ("stfn", "time_only", "space_only", "late_concat")


def ablate(
    params: Params,
    paths: Paths,
    seeds: list[int],
    variants: tuple[str, ...] = ABLATION_VARIANTS,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Train STFN and each ablation baseline over `seeds` on the same features and split (same
    training code), score them on test, log each as a child MLflow run under one parent, and write
    reports/ablation.json plus a bar chart with error bars."""
    from stfn import evaluation as ev
    from stfn import tracking
    from stfn.features import load_features
    from stfn.training import fit

    name = dataset_name(params, paths)
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
                out_dir = paths.model_dir(name) / "ablation" / f"{variant}-seed{seed}"
                result = fit(fs, p.model, p.train, seed, out_dir)
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
    report = {"dataset": name, "metric": metric, "seeds": seeds, "models": models}
    write_json(paths.reports / "ablation.json", report)
    chart = ev.plot_ablation(models, metric, paths.reports / "plots" / "ablation.png")
    if parent:
        tracking.log_metrics(parent, {f"{v}_{metric}_mean": m["mean"] for v, m in models.items()})
        tracking.log_artifact(parent, paths.reports / "ablation.json", "ablation")
        tracking.log_artifact(parent, chart, "ablation")
        tracking.end_run(parent)
    report["mlflow_run_id"] = parent
    return report


# --------------------------------------------------------------------------------------------- reports


def run_markdown(result: dict[str, Any]) -> str:
    """The summary of one pipeline run as markdown (published as a Prefect artifact)."""
    m = result["metrics"]
    keys = list(m["test"])
    lines = [
        f"# {result['dataset']}: {m['model']}",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        "| **stfn** | " + " | ".join(f"{m['test'][k]:.4f}" for k in keys) + " |",
    ]
    for name, b in m.get("baselines", {}).items():
        lines.append(
            f"| {name} (baseline) | " + " | ".join(f"{b['test'].get(k, float('nan')):.4f}" for k in keys) + " |"
        )
    uri = result.get("tracking_uri", "")
    run_id = result["mlflow_run_id"]
    link = (
        f"[{run_id}]({uri.rstrip('/')}/#/experiments/{result['experiment_id']}/runs/{run_id})"
        if uri.startswith("http") and result.get("experiment_id")
        else f"`{run_id}` (`make ui`, experiment '{result['experiment']}')"
    )
    decision = "promoted to @champion" if result["promoted"] else "not promoted; @champion kept"
    lines += [
        "",
        f"**Decision:** {result['registered_model']} version {result['version']} {decision}: {result['reason']}",
        "",
        f"**MLflow run:** {link}  ",
        f"**Data:** md5 `{result['data_md5']}`; {result.get('dvc', '')}  ",
        f"**Training:** {result['epochs_run']} epochs, {result['train_seconds']:.0f} s on {m['n_train']} samples",
    ]
    return "\n".join(lines)


def validation_markdown(summary: dict[str, Any]) -> str:
    """The validation summary of one run as markdown (a Prefect artifact)."""
    return (
        f"# Validation of {summary['dataset']}\n\n"
        f"**{summary['expectations']} expectations passed** on {summary['n_samples']} samples "
        f"in {summary['seconds']} s (Great Expectations).\n\nFull report: `{summary['report']}` "
        "(and `.html`, logged to the MLflow run under `validation/`)."
    )
