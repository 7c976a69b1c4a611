"""stfn.runtime.quiet_logs: what the CLI's terminal does not show, and what it still does."""

import logging
import warnings

from stfn.runtime import quiet_logs


def test_quiet_logs_drops_only_the_known_harmless_warnings_and_adds_its_filters_once():
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
    try:
        logging.captureWarnings(True)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Hint: Inferred schema contains integer column(s). ...", UserWarning, stacklevel=1)
            warnings.warn("a warning a user must see", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        logger.removeHandler(handler)
    assert any("a warning a user must see" in r for r in records)
    assert not any("Inferred schema" in r for r in records)
