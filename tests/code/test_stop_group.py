"""`stfn.ops.servers.stop_group`, the one way the project stops what it started (servers, the UI,
workers): the whole process group goes, even a member that ignores SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from stfn.ops.servers import stop_group


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_polite_group_goes_on_sigterm():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    stop_group(proc.pid, timeout=20)
    assert not _group_alive(proc.pid)
    assert proc.poll() is not None  # reaped, no zombie left behind


def test_members_that_ignore_sigterm_are_killed_after_the_timeout():
    # the leader and its child both ignore SIGTERM
    script = 'trap "" TERM; sleep 60 & wait'
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    time.sleep(0.5)
    stop_group(proc.pid, timeout=1)
    assert not _group_alive(proc.pid)
    assert proc.poll() is not None


def test_a_group_already_gone_is_fine(monkeypatch):
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    assert not _group_alive(proc.pid)
    sent = []

    def killpg(pgid, sig):
        sent.append((pgid, sig))
        return real_killpg(pgid, sig)

    real_killpg = os.killpg
    monkeypatch.setattr(os, "killpg", killpg)
    assert stop_group(proc.pid, timeout=1) is None  # no error
    # one SIGTERM finds no group and it returns: no wait, no SIGKILL
    assert sent == [(proc.pid, signal.SIGTERM)]
