"""stfn.runtime.quiet_logs: what the CLI's terminal does not show, and what it still does."""

import logging
import warnings

import pytest

from stfn.runtime import quiet_logs


@pytest.fixture
def logging_restored():
    """quiet_logs changes process-wide loggers and warning filters: put them back afterwards."""
    names = (
        *("py.warnings", "mlflow.pyfunc", "mlflow.models.model", "prefect.task_runs", "prefect.flow_runs"),
        *("httpx", "httpcore", "alembic", "mlflow.store.db.utils", "great_expectations", "urllib3.connectionpool"),
    )
    saved = {n: (list(logging.getLogger(n).filters), logging.getLogger(n).level) for n in names}
    with warnings.catch_warnings():
        yield
    for n, (filters, level) in saved.items():
        logging.getLogger(n).filters[:] = filters
        logging.getLogger(n).setLevel(level)


def test_quiet_logs_drops_only_the_known_harmless_warnings_and_adds_its_filters_once(logging_restored):
    quiet_logs()
    quiet_logs()  # the CLI, the benchmarks and tests may each call it
    logger = logging.getLogger("py.warnings")
    assert len(logger.filters) == len({type(f) for f in logger.filters})
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:  # as logging.captureWarnings routes a warning: one record on "py.warnings"
        logger.warning("%s", "/x.py:1: UserWarning: Add type hints to the `predict` method to enable ...")
        logger.warning("%s", "/x.py:2: UserWarning: a warning a user must see")
    finally:
        logger.removeHandler(handler)
    assert any("a warning a user must see" in r for r in records)
    assert not any("Add type hints" in r for r in records)


def test_logging_a_dataset_with_integer_labels_warns_of_nothing(tmp_path):
    """MLflow's hint about integer columns (our labels are never missing) is kept from the user at
    its source, not filtered from the log."""
    import pandas as pd

    import mlflow
    from stfn import tracking

    client = mlflow.MlflowClient()  # not set_experiment: the active experiment is process-wide
    name = "test-runtime-warnings"
    experiment = client.get_experiment_by_name(name)
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(name))
    samples = pd.DataFrame({"sample_id": ["a", "b"], "label": [0, 1], "split": ["train", "val"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracking.log_dataset(run.info.run_id, "tiny", tmp_path, "0" * 32, samples)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert client.get_run(run.info.run_id).inputs.dataset_inputs[0].dataset.name == "tiny"
