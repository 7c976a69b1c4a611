"""`make soak`'s year, made short for `make test-all`: three weeks on team mode's real parts
(MLflow and Prefect servers on PostgreSQL, `stfn deploy` and a process worker, a DVC remote,
`stfn serve` under the harness's supervisor and request loop), with every fault at its seeded
point (kill -9 of an append, of training, of a promotion, of the endpoint and of the MLflow
server; the inference log's tmpfs filled), and every invariant holding at the end. Seed 3 puts a
clean, a corrupt and a drifted week in a row, a promotion and the rollback in the last week."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INVARIANTS = {
    "every accepted batch is in the latest data version exactly once",
    "no corrupt batch was appended",
    "every data version in git history restores (fresh clone, dvc pull)",
    "the alias history equals the moves that happened",
    "no MLflow run is left RUNNING",
    "the request loop saw no failure while the endpoint was up",
    "the endpoint follows @champion",
    "false alarms on clean batches within monitor.alpha's rate",
    "every drifted batch alarmed",
    "disk grows only with what must be kept",
    "every planned fault was injected",
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.thorough
def test_a_short_year_with_every_fault_keeps_every_invariant(tmp_path, pg_databases, need):  # pg: reachable, or need()
    from soak import world

    if os.geteuid() != 0:
        need("the disk-full fault mounts a tmpfs, which needs root", "run make test-all as root (CI does)")
    work = tmp_path / "soak"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    out = subprocess.run(
        [sys.executable, "-m", "soak", "--weeks", "3", "--seed", "3", "--initial", "300", "--workdir", str(work)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    said = out.stdout + out.stderr
    assert out.returncode == 0, said[-5000:]
    assert said.startswith("soak: seed 3 (3 weeks; replay with `python -m soak --weeks 3 --seed 3`)")
    report = json.loads((work / "report.json").read_text())
    assert {r["invariant"] for r in report["invariants"]} == INVARIANTS
    assert all(r["passed"] for r in report["invariants"]), report["invariants"]
    for r in report["invariants"]:  # the table printed at the end
        assert f"{r['invariant']}  " in said
    assert [r["kind"] for r in report["rows"]] == ["clean", "corrupt", "drifted"]
    assert {f["fault"] for f in report["faults"]} == set(world.FAULTS)
    moves = [(m["cause"], m["to"]) for m in report["moves"]]
    assert moves[0] == ("first run", "1") and ("rollback", "1") in moves and any(c == "retrain" for c, _ in moves)
    assert report["requests"]["ok"] > 100 and report["requests"]["failed_while_up"] == 0
    assert [d["cause"] for d in report["downtime"]] == ["kill endpoint"] and report["downtime"][0]["seconds"] > 0
    assert (work / "soak.png").stat().st_size > 10_000
