"""Atomic writes land with the modes the user's umask gives (not mkstemp's private 0600/0700)."""

from __future__ import annotations

import os
import stat

import pytest

from stfn.fileio import atomic_dir, atomic_path, write_json


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_atomic_outputs_get_the_umask_modes(tmp_path, umask):
    write_json(tmp_path / "reports" / "metrics.json", {"a": 1})
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"weights")
    with atomic_dir(tmp_path / "features") as tmp:
        (tmp / "x.npy").write_bytes(b"x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "reports" / "metrics.json") == 0o666 & ~umask
    assert mode(tmp_path / "model.pt") == 0o666 & ~umask
    assert mode(tmp_path / "features") == 0o777 & ~umask
    assert mode(tmp_path / "features" / "x.npy") == 0o666 & ~umask
    assert {0o022: 0o644, 0o027: 0o640, 0o002: 0o664}[umask] == mode(tmp_path / "model.pt")
