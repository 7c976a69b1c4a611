"""`stfn tune` for real: an Optuna study in a SQLite file, each trial a child MLflow run under the
study's parent run (per-epoch curves, its Optuna state), the best settings written into
params.yaml as the dataset's section; the same command continues the study; a changed search
space ends with a clear message (exit 2; an unreachable storage: tests/code/test_tuning.py), a
Ctrl-C (make test-all) with the finished trials kept."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

STFN = str(Path(sys.executable).with_name("stfn"))
SPACE = {"train.lr": {"low": 0.001, "high": 0.01, "log": True}, "model.dim": {"choices": [8, 16]}}


def stfn(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "200", **(env or {})}
    return subprocess.run([STFN, *args], cwd=root, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture
def project(tmp_path, write_tiny_params):
    write_tiny_params(
        tmp_path / "params.yaml",
        **{"train.epochs": 3, "tune.space": SPACE, "tune.sampler": "random", "tune.startup_trials": 1},
    )
    return tmp_path


def study(root: Path, name: str = "moving-digits"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / '.stfn' / 'tune' / 'optuna.db'}")


def test_a_study_in_process_is_stored_tracked_written_continued_and_guarded(project):
    """The stage the command calls, in process (make test; the command itself: make test-all)."""
    import mlflow
    from stfn.config import ConfigError, Paths, load_params
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.stages.tune import tune

    params, paths = load_params(project / "params.yaml"), Paths(project)
    prepare(params, paths)
    featurize(params, paths, None)
    first = tune(params, paths, trials=2)
    s = study(project)
    assert first["trials"] == 2 and len(s.trials) == 2 and s.user_attrs["seed"] == 42
    assert first["complete"] + first["pruned"] == 2 and first["written"]["section"] == "datasets.moving-digits"
    tuned = load_params(project / "params.yaml")  # the dataset's section, applied to its runs
    assert tuned.train.lr == pytest.approx(s.best_params["train.lr"]) and tuned.model.dim == s.best_params["model.dim"]
    assert "# tuned by `stfn tune`: study 'moving-digits'" in (project / "params.yaml").read_text()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    parent = s.user_attrs["mlflow_parent_run_id"]
    runs = mlflow.search_runs(
        experiment_names=["moving-digits-tuning"], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert len(runs) == 2
    assert tune(params, paths, trials=1)["trials"] == 3 and study(project).user_attrs["mlflow_parent_run_id"] == parent
    other = params.model_copy(
        update={"tune": params.tune.model_copy(update={"space": {**SPACE, "model.dropout": {"low": 0.0, "high": 0.2}}})}
    )
    with pytest.raises(ConfigError, match="another space"):
        tune(other, paths, trials=1)
    assert len(study(project).trials) == 3


@pytest.mark.thorough  # make test-all: the same through the command (make test: the stage, above)
def test_a_study_is_stored_tracked_written_and_continued(project):
    import mlflow

    proc = stfn(project, "tune", "--trials", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = study(project)
    assert len(s.trials) == 2 and s.user_attrs["space"]["model.dim"] == {"kind": "categorical", "choices": [8, 16]}
    assert s.user_attrs["seed"] == 42 and s.user_attrs["metric"] == "accuracy"
    states = [t.state.name for t in s.trials]
    assert "2 in the study" in proc.stdout and f"{states.count('PRUNED')} pruned" in proc.stdout
    # MLflow (the store the command was pointed at): the study's parent run, a child per trial
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = mlflow.tracking.MlflowClient()
    parent = s.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).data.tags["kind"] == "tune"

    def children():
        return mlflow.search_runs(
            experiment_names=["moving-digits-tuning"], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )

    assert len(children()) == 2
    assert sorted(children()["tags.optuna.state"]) == sorted(states)
    for t in s.trials:
        curve = client.get_metric_history(t.user_attrs["mlflow_run_id"], "val_accuracy")
        assert [m.step for m in curve][: len(t.intermediate_values)] == sorted(t.intermediate_values)
        assert "test_accuracy" not in client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics  # validation only
    # params.yaml: the best trial's settings as the dataset's section, the study named above it
    text = (project / "params.yaml").read_text()
    section = yaml.safe_load(text)["datasets"]["moving-digits"]
    assert section["train"]["lr"] == pytest.approx(s.best_params["train.lr"])
    assert section["model"]["dim"] == s.best_params["model.dim"]
    assert f"study 'moving-digits' (sqlite:///{project}/.stfn/tune/optuna.db), trial {s.best_trial.number}" in text
    # the same command continues the study, under the same parent run
    proc = stfn(project, "tune", "--trials", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(study(project).trials) == 3 and "3 in the study" in proc.stdout
    assert study(project).user_attrs["mlflow_parent_run_id"] == parent and len(children()) == 3
    # another search space for the same study: refused, named, nothing run
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"]["space"]["model.dropout"] = {"low": 0.0, "high": 0.2}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = stfn(project, "tune", "--trials", "1")
    assert proc.returncode == 2
    assert "study 'moving-digits'" in proc.stderr and "another space" in proc.stderr and "--study" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(study(project).trials) == 3  # nothing ran


@pytest.mark.thorough  # make test-all: a second study, interrupted
def test_ctrl_c_keeps_the_finished_trials(project):
    # Ctrl-C in the middle of a study: the finished trials stay, the same command continues it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    tune = subprocess.Popen([STFN, "tune", "--study", "long", "--trials", "50"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            if sum(t.state.name == "COMPLETE" for t in study(project, "long").trials) >= 1:
                break
        except Exception:  # noqa: BLE001 - the storage or the study not created yet
            continue
    tune.send_signal(signal.SIGINT)
    out, err = tune.communicate(timeout=120)
    assert tune.returncode == 130, out + err
    assert "interrupted: the finished trials stay in the study" in err and "Traceback" not in err
    kept = study(project, "long").trials
    assert sum(t.state.name == "COMPLETE" for t in kept) >= 1 and len(kept) < 50
    assert all(t.state.name != "RUNNING" for t in kept)


@pytest.mark.thorough  # make test-all: a study on a generated daily record (make test: the metric's key, tests/code)
def test_a_regression_study_minimises_the_validation_mae(tmp_path, write_tiny_params):
    """A regression dataset (a generated daily record): trials judged on the validation MAE in
    standardised units (the figure training stops early on), minimised."""
    from calendar_record import write_seasonal  # tests/calendar_record.py

    from stfn.config import Paths, load_params
    from stfn.stages.featurize import featurize
    from stfn.stages.tune import tune
    from stfn.stages.validate import validate

    write_seasonal(tmp_path / "data" / "raw" / "seasonal", years=3)
    space = {"train.lr": {"low": 0.001, "high": 0.01}}
    write_tiny_params(tmp_path / "params.yaml", **{"data.dataset": "seasonal", "train.epochs": 2, "tune.space": space})
    params, paths = load_params(tmp_path / "params.yaml"), Paths(tmp_path)
    featurize(params, paths, validate(params, paths)["data_md5"])
    summary = tune(params, paths, trials=2, write=False)
    s = study(tmp_path, "seasonal")
    assert s.direction.name == "MINIMIZE" and s.user_attrs["metric"] == "mae_std"
    assert summary["complete"] + summary["pruned"] == 2 and 0 < summary["best"]["value"] < 5
    curve = [t.intermediate_values for t in s.trials]
    assert all(len(c) >= 1 for c in curve)  # reported each epoch: the pruner's input
