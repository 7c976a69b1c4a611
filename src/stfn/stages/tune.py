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

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from stfn import defaults, progress, tracking, tuning
from stfn.config import ConfigError, Params, Paths
from stfn.features import load_features
from stfn.runtime import stage_context
from stfn.training import fit

log = logging.getLogger(__name__)

STORAGE_ENV = "STFN_TUNE_STORAGE"
# what a trial is judged on: the validation figure training stops early on (stfn.training.score):
# accuracy, or the MAE in standardised target units (the same ranking as the MAE itself)
TRIAL_METRIC = {"classification": "accuracy", "regression": "mae_std"}


def stale_trial(study: Any, trial: Any) -> None:
    """A trial whose heartbeat stopped (its worker killed, its host lost), failed by Optuna: queued
    again once (Optuna's RetryHeartbeatStaleTrialCallback), and its MLflow run marked KILLED, not left
    RUNNING."""
    import optuna

    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        try:
            tracking.set_tags(run_id, {"optuna.state": "FAIL", "stfn.killed": "its worker stopped"})
            tracking.end_run(run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - the study goes on; the run stays as it was
            log.warning("could not mark the MLflow run %s of trial %d KILLED: %s", run_id, trial.number, exc)


def storage_url(paths: Paths, given: str | None = None) -> str:
    """`--storage`, else $STFN_TUNE_STORAGE, else a SQLite file under `.stfn/tune/`."""
    url = given or os.environ.get(STORAGE_ENV, "")
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy's default driver is psycopg 3; ours is psycopg2
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url:
        return url
    (paths.state / "tune").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.state / 'tune' / 'optuna.db'}"


def open_study(
    params: Params,
    paths: Paths,
    name: str,
    url: str,
    space: dict[str, dict],
    metric: str,
    data_md5: str | None = None,
    worker: int = 0,
) -> Any:
    """The study `name` in the storage at `url`, created or continued; refuses one recorded with
    another search space, dataset, metric or data version (ConfigError naming both): every trial
    of a study, on whichever machine, is judged on the same validation split of the same data."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its failed-trial warning carries a traceback: ours is one line
    shown = tracking.scrub_uri(url)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=params.tune.heartbeat_seconds,
            grace_period=params.tune.grace_seconds,
            heartbeat_stale_trial_callback=stale_trial,
        )
        summaries = {s.study_name: s for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        raise ConfigError(f"the tuning storage {shown} cannot be reached: {type(exc).__name__}") from None
    dataset = paths.dataset_name(params.data.dataset)
    recorded = {"space": space, "dataset": dataset, "metric": metric, "data_md5": data_md5}
    if name in summaries:
        attrs = summaries[name].user_attrs
        for key, value in recorded.items():
            if attrs.get(key) != value:
                what = "data version" if key == "data_md5" else key
                fix = "data (`dvc pull` its version)" if key == "data_md5" else "tune.space and dataset"
                raise ConfigError(
                    f"study '{name}' in {shown} was started with another {what} ({attrs.get(key)!r}; here "
                    f"{value!r}): continue it with the same {fix}, or name a new study with --study"
                )
    done = len(optuna.load_study(study_name=name, storage=storage).trials) if name in summaries else 0
    # a continued study draws new points, not the first call's again; each worker its own
    seed = params.seed + done + 1000 * worker
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
    direction = "maximize" if metric == "accuracy" else "minimize"
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
    )
    if name not in summaries:
        for key, value in {**recorded, "seed": params.seed, "sampler": params.tune.sampler}.items():
            study.set_user_attr(key, value)
    return study


def start(
    params: Params, paths: Paths, study_name: str | None = None, storage: str | None = None, worker: int = 0
) -> tuple[Any, str]:
    """The study (default: the dataset's name) opened or created on the features made here, its
    MLflow parent run started or found; the study and its storage's URL."""
    name = paths.dataset_name(params.data.dataset)
    space = tuning.check_space(params.tune.space, params)
    metric = TRIAL_METRIC[load_features(paths.features_dir(name)).spec.task]
    url = storage_url(paths, storage)
    study = open_study(params, paths, study_name or name, url, space, metric, features_md5(paths, name), worker)
    tracking.configure(paths.mlflow_dir, params.tracking.retry_seconds)
    parent_run(study, paths, name, study.study_name, url)
    return study, url


def tune(
    params: Params,
    paths: Paths,
    study_name: str | None = None,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    storage: str | None = None,
    write: bool = True,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    total: int | None = None,
    worker: int = 0,
) -> dict[str, Any]:
    """Run `trials` trials of the study (default: the dataset's name) on the features already made
    (prepare, validate, featurize first); returns the study's summary and, with `write`, writes
    the best settings into params.yaml. With `total` (a worker of a study shared by several), run
    trials until the study holds `total` finished ones (complete or pruned), whoever ran them;
    `worker` numbers the worker (its sampler's seed)."""
    import optuna

    study, url = start(params, paths, study_name, storage, worker)
    name, metric, study_name = study.user_attrs["dataset"], study.user_attrs["metric"], study.study_name
    space = study.user_attrs["space"]
    fs = load_features(paths.features_dir(name))
    n_train = len(fs.rows("train"))
    trials = trials or params.tune.trials
    timeout = (timeout_minutes if timeout_minutes is not None else params.tune.timeout_minutes) * 60 or None
    parent = study.user_attrs["mlflow_parent_run_id"]

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
            trial.set_user_attr("train_seconds", round(result.seconds, 3))  # the trial's share spent training
            state = "FINISHED"
            return float(result.best_val)
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except (RuntimeError, ValueError) as exc:  # a point the model refuses, out of memory: the study goes on
            log.warning("trial %d failed: %s", trial.number, str(exc).splitlines()[0] if str(exc) else repr(exc))
            raise
        finally:
            tracking.set_tags(child, {"optuna.state": {"FINISHED": "COMPLETE", "FAILED": "FAIL"}.get(state, state)})
            tracking.end_run(child, "FAILED" if state == "FAILED" else "FINISHED")
            shutil.rmtree(out, ignore_errors=True)

    t0 = time.perf_counter()
    before = len(study.trials)
    with progress.bar(f"tuning {study_name}", trials if total is None else total) as update:

        def trial_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            summary = summarise(study, metric)
            best = summary.get("best")
            info = f"best val {metric} {best['value']:.4g} (trial {best['number']})" if best else "no trial complete"
            update(len(study.trials) - before, info=f"{info}, {summary['pruned']} pruned")
            if on_trial:
                on_trial({"number": trial.number, "state": trial.state.name, "value": trial.value, **summary})

        callbacks: list[Callable] = [trial_done]
        if total is not None:  # a worker: until the study holds `total` finished trials, whoever ran them
            ran = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            callbacks.append(optuna.study.MaxTrialsCallback(total, states=ran))
            trials = None
        if total is None or finished(study) < total:
            caught = (RuntimeError, ValueError)  # one failed trial, named in the log; the study goes on
            study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=callbacks, catch=caught)
    return conclude(params, paths, study, url, time.perf_counter() - t0, write)


def conclude(params: Params, paths: Paths, study: Any, url: str, seconds: float, write: bool) -> dict[str, Any]:
    """The study's summary, logged on its parent run; with `write`, the best trial's settings
    written into params.yaml as the dataset's section."""
    name, metric = study.user_attrs["dataset"], study.user_attrs["metric"]
    parent = study.user_attrs["mlflow_parent_run_id"]
    summary = summarise(study, metric)
    summary.update(
        {"study": study.study_name, "storage": tracking.scrub_uri(url), "dataset": name, "metric": metric,
         "seconds": round(seconds, 1), "mlflow_run_id": parent, "seed": study.user_attrs["seed"]}
    )  # fmt: skip
    tracking.log_metrics(parent, {f"best_val_{metric}": summary["best"]["value"]} if summary.get("best") else {})
    tracking.set_tags(parent, {"trials": str(summary["trials"]), "pruned": str(summary["pruned"])})
    tracking.end_run(parent)  # a continued study logs to it again
    if write and summary.get("best"):
        best = study.best_trial
        plain = {k: v for k, v in best.params.items() if k != tuning.BUDGET}
        batch = tuning.apply(params, plain, auto_epochs=1).train.batch_size
        n_train = len(load_features(paths.features_dir(name)).rows("train"))
        section = tuning.as_section(best.params, defaults.epochs_for(n_train, batch)[0])
        note = tuning.study_note(study.study_name, best.number, metric, best.value, summary["storage"])
        tuning.write_best(paths.params_file, name, section, note)
        summary["written"] = {"file": str(paths.params_file), "section": f"datasets.{name}", "settings": section}
    return summary


def features_md5(paths: Paths, name: str) -> str | None:
    """The data version the features were made from (featurize's stamp)."""
    stamp = paths.features_dir(name) / Paths.FEATURES_STAMP
    return json.loads(stamp.read_text()).get("data_md5") if stamp.is_file() else None


def settle(study: Any, grace_seconds: float) -> int:
    """After the workers: a trial still RUNNING whose heartbeat stopped (its worker lost after the
    others had finished the study) is failed as a worker would have (its point queued for the
    study's next call, its MLflow run KILLED), waiting up to a grace period for the heartbeat to go
    stale; returns how many are left running (a worker still alive)."""
    import optuna

    deadline = time.monotonic() + grace_seconds + 30
    while True:
        optuna.storages.fail_stale_trials(study)
        running = sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(1)


def finished(study: Any) -> int:
    """Trials of the study that ran to their end: complete or pruned."""
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


def summarise(study: Any, metric: str) -> dict[str, Any]:
    """Counts by state, the pruned share, the best complete trial."""
    import optuna

    states = [t.state for t in study.trials]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    ran = count["complete"] + count["pruned"]
    out: dict[str, Any] = {
        "trials": len(states),
        "complete": count["complete"],
        "pruned": count["pruned"],
        "failed": count["fail"],
        "pruned_share": round(count["pruned"] / ran, 3) if ran else 0.0,
    }
    if count["complete"]:
        b = study.best_trial
        out["best"] = {"number": b.number, "value": b.value, "params": b.params}
    return out


def parent_run(study: Any, paths: Paths, dataset: str, study_name: str, url: str) -> str:
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


def main(argv: list[str] | None = None) -> None:
    """`python -m stfn.stages.tune --study NAME --total N [--worker K]`: one worker of a shared
    study, on the features already made (what each `tune/trials` flow run does, without Prefect)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m stfn.stages.tune")
    ap.add_argument("--study", required=True)
    ap.add_argument("--total", type=int, required=True, help="run trials until the study holds this many finished")
    ap.add_argument("--worker", type=int, default=0, help="the worker's number (its sampler's seed)")
    args = ap.parse_args(argv)
    params, paths = stage_context()
    summary = tune(params, paths, args.study, total=args.total, worker=args.worker, write=False)
    print(json.dumps({k: v for k, v in summary.items() if k != "best"}, default=str))


if __name__ == "__main__":
    main()
