"""Stage `evaluate`: the best checkpoint scored on val and test (and, for regression, the simple
baselines on the same rows); writes reports/metrics.json, reports/per_class.json and the plots
in reports/plots/. DVC: `python -m stfn.stages.evaluate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from stfn import evaluation as ev
from stfn import monitoring, plots, progress
from stfn.baselines import regression_baselines
from stfn.config import Params, Paths
from stfn.data import contract
from stfn.features import FeatureSet, load_features
from stfn.fileio import write_json
from stfn.runtime import stage_context
from stfn.training import load_checkpoint, predict_arrays

TRIGGER_COLUMNS = {"trigger_frame", "trigger_row", "trigger_col"}  # moving-digits: where the answer is


def model_label(params: Params) -> str:
    m = params.model
    if m.variant == "stfn":
        return f"stfn ({m.spatial_encoder}+{m.temporal_encoder}, {m.alignment})"
    return f"{m.variant} (ablation baseline)"


def score_split(
    fs: FeatureSet, model: Any, split: str, on_batch: Callable[[int, int], None] | None = None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Metrics of `model` on one split of a feature set, with its raw outputs and attention."""
    rows = fs.rows(split)
    time = fs.calendar[rows] if fs.calendar is not None else None
    out, att = predict_arrays(model, fs.series[rows], fs.frames[rows], on_batch=on_batch, time=time)
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


def pointing_for(
    params: Params, paths: Paths, fs: FeatureSet, rows: np.ndarray, attention: np.ndarray | None
) -> float | None:
    """The pointing score when the dataset records where its trigger is (moving-digits); with
    tubelets of t frames, attention step k covers frames [k t, (k+1) t)."""
    if attention is None:
        return None
    meta = contract.read_parquet(paths.dataset_dir(params.data.dataset), contract.SAMPLES_FILE, fs.spec.name)
    if not TRIGGER_COLUMNS <= set(meta.columns):
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


def regression_baselines_for(params: Params, paths: Paths, fs: FeatureSet) -> dict[str, dict[str, Any]]:
    """Persistence, climatology and ridge (those the dataset allows) scored on the same val and
    test rows as the model: {name: {"test": metrics, "val": metrics, "note": how}}."""
    folder = paths.dataset_dir(params.data.dataset)
    samples = contract.read_parquet(folder, contract.SAMPLES_FILE, fs.spec.name)
    series = contract.series_array(
        contract.read_parquet(folder, contract.SERIES_FILE, fs.spec.name), samples["sample_id"], fs.spec
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
    name = paths.dataset_name(params.data.dataset)
    fs = load_features(paths.features_dir(name))
    model, _ = load_checkpoint(paths.checkpoint(name))
    history = json.loads(paths.history_file(name).read_text())
    results: dict[str, Any] = {}
    outputs: dict[str, tuple] = {}
    sizes = {split: len(fs.rows(split)) for split in ("val", "test")}
    with progress.bar("evaluating", sum(sizes.values())) as update:
        for split, offset in (("val", 0), ("test", sizes["val"])):
            results[split], *outputs[split] = score_split(
                fs, model, split, lambda done, _n, o=offset, s=split: update(o + done, info=f"{name}: {s} split")
            )
        update(info=f"{name}: plots and reports/metrics.json")
        return _write_outputs(params, paths, name, fs, history, results, outputs)


def _in_unit(fs: FeatureSet, standardised: np.ndarray) -> np.ndarray:
    """A regression output or label back in the target's unit."""
    return standardised * fs.stats["target_std"] + fs.stats["target_mean"]


def _write_outputs(
    params: Params,
    paths: Paths,
    name: str,
    fs: FeatureSet,
    history: dict[str, Any],
    results: dict[str, Any],
    outputs: dict[str, tuple],
) -> dict[str, Any]:
    """The plots, reports/per_class.json and reports/metrics.json of an evaluation."""
    spec, folder = fs.spec, paths.plots
    test_out, test_att = outputs["test"]
    test_rows = fs.rows("test")
    files = {"training_curves": plots.plot_training_curves(history["history"], folder / "training_curves.png")}
    baselines: dict[str, dict[str, Any]] = {}
    if spec.task == "classification":
        files["confusion_matrix"] = plots.plot_confusion_matrix(
            results["test"]["confusion_matrix"], spec.target.classes or [], folder / "confusion_matrix.png"
        )
        write_json(paths.per_class_file, results["test"]["per_class"])
        files["reliability"] = plots.plot_reliability(
            results["test"]["reliability"], results["test"]["metrics"]["ece"], folder / "reliability.png"
        )
        pointing = pointing_for(params, paths, fs, test_rows, test_att)
        if pointing is not None:
            results["test"]["metrics"]["pointing"] = pointing
    else:
        baselines = regression_baselines_for(params, paths, fs)
        files["predicted_vs_actual"] = plots.plot_predicted_vs_actual(
            _in_unit(fs, fs.labels[test_rows]),
            _in_unit(fs, test_out[:, 0]),
            spec.target.unit,
            folder / "predicted_vs_actual.png",
        )
    show = min(4, len(test_rows))
    if spec.task == "classification":
        names = spec.target.classes or []
        truth = [names[int(fs.labels[r])] for r in test_rows[:show]]
        pred = [names[int(k)] for k in test_out[:show].argmax(-1)]
    else:
        unit = spec.target.unit or ""
        truth = [f"{v:.2f} {unit}" for v in _in_unit(fs, fs.labels[test_rows[:show]])]
        pred = [f"{v:.2f} {unit}" for v in _in_unit(fs, test_out[:show, 0])]
    titles = [
        f"{fs.index['sample_id'].iloc[r]}\ny={t} pred={p}"
        for r, t, p in zip(test_rows[:show], truth, pred, strict=True)
    ]
    files["input_samples"] = plots.plot_samples(
        np.asarray(fs.frames[test_rows[:3]]),
        np.asarray(fs.series[test_rows[:3]]),
        list(spec.frames.steps),
        spec.channel_names,
        titles[:3],
        folder / "input_samples.png",
    )
    if test_att is not None:
        per_frame = np.repeat(test_att[:show], spec.frames.count // test_att.shape[1], axis=1)  # tubelets
        files["attention"] = plots.plot_attention(
            np.asarray(fs.frames[test_rows[:show]]), per_frame, titles, folder / "attention.png"
        )
    test_metrics = results["test"]["metrics"]
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
        **({"versus_baselines": ev.versus_baselines(test_metrics, baselines, "mae")} if baselines else {}),
        "mlflow_run_id": None,
        "registered_version": None,
        "promoted": False,
    }
    write_json(paths.metrics_file, metrics)
    write_json(paths.reference_file(name), reference_for(params, paths, fs, outputs["val"][0], metrics))
    return {"metrics": metrics, "plots": {k: str(v) for k, v in files.items()}}


def reference_for(
    params: Params, paths: Paths, fs: FeatureSet, val_out: np.ndarray, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The model's reference statistics (stfn.monitoring): the raw training split as read from
    the dataset folder (not the features: the monitor compares raw batches), the model's
    predictions on the validation split, its test metric, and how far the raw validation split
    lies from the training split (the monitor's calibration)."""
    folder = paths.dataset_dir(params.data.dataset)
    spec, rows, val_rows = fs.spec, fs.rows("train"), fs.rows("val")
    long = contract.read_parquet(folder, contract.SERIES_FILE, spec.name)
    series = contract.series_array(long, fs.index["sample_id"].iloc[rows], spec)
    val_series = contract.series_array(long, fs.index["sample_id"].iloc[val_rows], spec)
    frames = contract.open_frames(folder, spec)
    val_pred = val_out if spec.task == "classification" else _in_unit(fs, val_out[:, 0])
    labels = fs.labels[rows] if spec.task == "classification" else _in_unit(fs, fs.labels[rows])
    return monitoring.build_reference(
        dataset=spec.name,
        task=spec.task,
        channels=spec.channel_names,
        frames_dtype=spec.frames.dtype,
        classes=list(spec.target.classes or []),
        train_series=series,
        train_frames=frames[rows],
        train_labels=labels,
        val_predictions=val_pred,
        metric=metrics["primary_metric"],
        test_metric=metrics["test"][metrics["primary_metric"]],
        n_summaries=params.monitor.reference_samples,
        seed=params.seed,
        val_series=val_series,
        val_frames=frames[val_rows],
    )


def main() -> None:
    params, paths = stage_context()
    print(json.dumps(evaluate(params, paths)["metrics"], default=str))


if __name__ == "__main__":
    main()
