"""`stfn tune`: an Optuna study over params.yaml's `tune.space`, each trial trained on the
dataset's features and judged on its validation split only (the test split is never seen: it is
the gate's, when the tuned settings are run).

The study lives in Optuna's RDB storage: a SQLite file under `.stfn/tune/` locally, or the URL in
`STFN_TUNE_STORAGE` / `--storage` (the team's PostgreSQL), so running `stfn tune` again with the
same `--study` continues it. Its sampler ships with Optuna (TPE, seeded by `seed` plus the trials
already in the study, so a continued study does not redraw the same points; or random); its
pruner (median) stops a trial whose validation metric at an epoch is below the median of the
earlier trials' at that epoch. The study records its search space, dataset, metric and seed, and
refuses to continue with another space.

MLflow: one parent run per study in experiment `<dataset>-tuning` (continued with the study),
one child run per trial: its settings as params, per-epoch curves, the final validation metric,
its Optuna state as a tag — the UI's chart view compares them. The best trial's settings are
written into params.yaml as `datasets.<name>` (stfn.tuning.write_best), so the next `stfn run
--dataset NAME` and `dvc repro` use them, and the model they train meets the gate like any other.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from stfn import defaults, progress, tracking, tuning
from stfn import evaluation as ev
from stfn.config import ConfigError, Params, Paths
from stfn.features import load_features
from stfn.training import fit

log = logging.getLogger(__name__)

STORAGE_ENV = "STFN_TUNE_STORAGE"
HEARTBEAT_SECONDS = 30  # a trial's process records it is alive this often
GRACE_SECONDS = 120  # ... and one silent this long is failed (its worker was killed) and retried once


def storage_url(paths: Paths, given: str | None = None) -> str:
    """`--storage`, else $STFN_TUNE_STORAGE, else a SQLite file under `.stfn/tune/`."""
    url = given or os.environ.get(STORAGE_ENV, "")
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver is psycopg 3; ours is psycopg2
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url:
        return url
    (paths.state / "tune").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.state / 'tune' / 'optuna.db'}"


def open_study(params: Params, paths: Paths, name: str, url: str, space: dict[str, dict], metric: str) -> Any:
    """The study `name` in the storage at `url`, created or continued; refuses one recorded with
    another search space, dataset or metric (ConfigError naming both)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its failed-trial warning carries a traceback: ours is one line
    shown = tracking.scrub_uri(url)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
        summaries = {s.study_name: s for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        raise ConfigError(f"the tuning storage {shown} cannot be reached: {type(exc).__name__}") from None
    dataset = paths.dataset_name(params.data.dataset)
    recorded = {"space": space, "dataset": dataset, "metric": metric}
    if name in summaries:
        attrs = summaries[name].user_attrs
        for key, value in recorded.items():
            if attrs.get(key) != value:
                raise ConfigError(
                    f"study '{name}' in {shown} was started with another {key} ({attrs.get(key)!r}; now {value!r}): "
                    "continue it with the same tune.space and dataset, or name a new study with --study"
                )
    done = len(optuna.load_study(study_name=name, storage=storage).trials) if name in summaries else 0
    seed = params.seed + done  # a continued study draws new points, not the first call's again
    sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.tune.startup_trials)
        if params.tune.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=params.tune.startup_trials, n_warmup_steps=1)
        if params.tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    direction = "maximize" if ev.HIGHER_IS_BETTER[metric] else "minimize"
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
    )
    if name not in summaries:
        for key, value in {**recorded, "seed": params.seed, "sampler": params.tune.sampler}.items():
            study.set_user_attr(key, value)
    return study


def tune(
    params: Params,
    paths: Paths,
    study_name: str | None = None,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    storage: str | None = None,
    write: bool = True,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `trials` trials of the study (default: the dataset's name) on the features already made
    (prepare, validate, featurize first); returns the study's summary and, with `write`, writes
    the best settings into params.yaml."""
    import optuna

    name = paths.dataset_name(params.data.dataset)
    space = tuning.check_space(params.tune.space, params)
    fs = load_features(paths.features_dir(name))
    metric = ev.PRIMARY_METRIC[fs.spec.task]
    study_name = study_name or name
    url = storage_url(paths, storage)
    study = open_study(params, paths, study_name, url, space, metric)
    n_train = len(fs.rows("train"))
    trials = trials or params.tune.trials
    timeout = (timeout_minutes if timeout_minutes is not None else params.tune.timeout_minutes) * 60 or None
    tracking.configure(paths.mlflow_dir, params.tracking.retry_seconds)
    parent = _parent_run(study, paths, name, study_name, url)

    def objective(trial: optuna.Trial) -> float:
        values = tuning.suggest(trial, space)
        plain = {k: v for k, v in values.items() if k != tuning.BUDGET}
        batch = tuning.apply(params, plain, auto_epochs=1).train.batch_size
        auto_epochs, _ = defaults.epochs_for(n_train, batch)
        p = tuning.apply(params, values, auto_epochs)
        p, _ = defaults.for_dataset(p, paths)
        child = tracking.start_run(
            f"{name}-tuning",
            paths.mlflow_dir,
            run_name=f"{study_name}-trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent,
                "kind": "tune-trial",
                "study": study_name,
                "optuna.trial": str(trial.number),
            },  # fmt: skip
        )
        trial.set_user_attr("mlflow_run_id", child)
        tracking.log_params(child, {**values, "train.epochs": p.train.epochs, "train.patience": p.train.patience})
        out = paths.state / "tune" / study_name / f"trial-{trial.number}"

        def epoch_done(row: dict[str, float]) -> None:
            epoch = int(row["epoch"])
            tracking.log_metrics(child, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            trial.report(row[f"val_{metric}"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val {metric} {row[f'val_{metric}']:.4g} at epoch {epoch}")

        state = "FAILED"
        try:
            result = fit(fs, p.model, p.train, p.seed, out, on_epoch=epoch_done, resume=False)
            tracking.log_metrics(child, {f"val_{metric}": result.best_val, "best_epoch": result.best_epoch})
            state = "FINISHED"
            return float(result.best_val)
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except RuntimeError as exc:  # one bad point of the space (e.g. out of memory): the study goes on
            log.warning("trial %d failed: %s", trial.number, str(exc).splitlines()[0] if str(exc) else repr(exc))
            raise
        finally:
            tracking.set_tags(child, {"optuna.state": {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(state, state)})
            tracking.end_run(child, "FAILED" if state == "FAILED" else "FINISHED")
            shutil.rmtree(out, ignore_errors=True)

    t0 = time.perf_counter()
    before = len(study.trials)
    with progress.bar(f"tuning {study_name}", trials) as update:

        def trial_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            summary = summarise(study, metric)
            best = summary.get("best")
            info = f"best val {metric} {best['value']:.4g} (trial {best['number']})" if best else "no trial complete"
            update(len(study.trials) - before, info=f"{info}, {summary['pruned']} pruned")
            if on_trial:
                on_trial({"number": trial.number, "state": trial.state.name, "value": trial.value, **summary})

        study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[trial_done], catch=(RuntimeError,))
    summary = summarise(study, metric)
    summary.update(
        {"study": study_name, "storage": tracking.scrub_uri(url), "dataset": name, "metric": metric,
         "seconds": round(time.perf_counter() - t0, 1), "mlflow_run_id": parent, "seed": study.user_attrs["seed"]}
    )  # fmt: skip
    tracking.log_metrics(parent, {f"best_val_{metric}": summary["best"]["value"]} if summary.get("best") else {})
    tracking.set_tags(parent, {"trials": str(summary["trials"]), "pruned": str(summary["pruned"])})
    tracking.end_run(parent)  # a continued study logs to it again
    if write and summary.get("best"):
        best = study.best_trial
        plain = {k: v for k, v in best.params.items() if k != tuning.BUDGET}
        batch = tuning.apply(params, plain, auto_epochs=1).train.batch_size
        section = tuning.as_section(best.params, defaults.epochs_for(n_train, batch)[0])
        note = tuning.study_note(study_name, best.number, metric, best.value, summary["storage"])
        tuning.write_best(paths.params_file, name, section, note)
        summary["written"] = {"file": str(paths.params_file), "section": f"datasets.{name}", "settings": section}
    return summary


def summarise(study: Any, metric: str) -> dict[str, Any]:
    """Counts by state, the pruned share, the best complete trial."""
    import optuna

    states = [t.state for t in study.trials]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    finished = count["complete"] + count["pruned"]
    out: dict[str, Any] = {
        "trials": len(states),
        "complete": count["complete"],
        "pruned": count["pruned"],
        "failed": count["fail"],
        "pruned_share": round(count["pruned"] / finished, 3) if finished else 0.0,
    }
    if count["complete"]:
        b = study.best_trial
        out["best"] = {"number": b.number, "value": b.value, "params": b.params}
    return out


def _parent_run(study: Any, paths: Paths, dataset: str, study_name: str, url: str) -> str:
    """The study's MLflow parent run: the one it recorded (continued), or a new one."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            tracking.run_status(run_id)
            return run_id
        except Exception:  # noqa: BLE001 - another MLflow store than the study's first: start a parent here
            log.info("the study's MLflow run %s is not in this store: a new parent run", run_id)
    run_id = tracking.start_run(
        f"{dataset}-tuning",
        paths.mlflow_dir,
        run_name=f"study-{study_name}",
        tags={"kind": "tune", "study": study_name, "storage": tracking.scrub_uri(url), "dataset": dataset},
    )
    tracking.log_params(run_id, {"seed": study.user_attrs.get("seed"), "sampler": study.user_attrs.get("sampler"),
                                 **{f"space.{k}": str(v) for k, v in study.user_attrs["space"].items()}})  # fmt: skip
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id
