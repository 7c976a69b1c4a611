"""`need` (tests/conftest.py), the one way a test says that a service or tool it depends on is
missing: a failure under CI (CI=true or 1, any case), a skip elsewhere; both say what to do."""

from __future__ import annotations

import pytest

MISSING, FIX = "PostgreSQL not reachable at 127.0.0.1:5432", "start it with `pg_ctlcluster 15 main start`"


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", " true\n"])
def test_under_ci_a_missing_service_fails_saying_what_to_start(need, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception) as info:
        need(MISSING, FIX)
    assert f"{MISSING}: {FIX}" in str(info.value)
    assert not info.value.pytrace  # the message alone, no traceback into the helper


@pytest.mark.parametrize("value", [None, "", "false", "0", "no"])
def test_elsewhere_a_missing_service_skips_saying_why(need, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception) as info:
        need(MISSING, FIX)
    assert not isinstance(info.value, pytest.fail.Exception)
    assert f"{MISSING}: {FIX}" in str(info.value)
