"""The simulated year, week by week, on a running `Cluster`.

Each week: the batch arrives and the `monitor/watch` deployment judges it on the worker (appending
it when it is valid: `monitor.append: always`; an alarm also runs the retrain deployment); the
week's scheduled retrain runs when the cron would; the team rolls @champion back on its seeded
week; the new data version is committed to git (as a team's CI would); the disk is measured.
Faults fall at their seeded week and point; after each, the harness does what a supervisor or the
next cron would do (restart the endpoint or the MLflow server, run the killed flow again) and
records what it saw.
"""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from soak import world
from soak.cluster import BIN, Cluster, du, flow_run_process, kill_tree, run
from stfn.ops import versioning

MONITOR, RETRAIN = "monitor/watch", "retrain/retrain-scheduled"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Year:
    def __init__(self, cluster: Cluster, seed: int, weeks: list[world.Week], batch_size: int, say=print):
        self.c, self.seed, self.weeks, self.batch_size, self.say = cluster, seed, weeks, batch_size, say
        self.name = cluster.name
        self.model = f"stfn-{self.name}"
        self.rows: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []  # every change of @champion the harness saw, in order
        self.versions: list[dict[str, Any]] = []  # every data version committed: week, commit, md5, batches
        self.disk: list[dict[str, Any]] = []
        self.accepted: dict[str, int] = {}  # batch prefix -> its samples
        self.refused: list[str] = []
        self.seen_retrains: set[str] = set()
        self.offset_std = 1.0
        self.current: str | None = None  # @champion at the last look
        self.rng = random.Random(seed)

    # -- Prefect and MLflow ---------------------------------------------------------------------
    def submit(self, deployment: str, parameters: dict, env: dict | None = None, tags: list[str] | None = None) -> str:
        from prefect.deployments import run_deployment

        fr = run_deployment(
            name=deployment,
            parameters=parameters,
            timeout=0,
            as_subflow=False,
            job_variables={"env": env} if env else None,
            tags=tags or [],
        )
        return str(fr.id)

    def state(self, flow_run_id: str) -> str:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state_type.value

    def wait(self, flow_run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state(flow_run_id)
            if st in FINAL:
                return st
            time.sleep(1)
        raise RuntimeError(f"flow run {flow_run_id} not finished after {timeout} s (see {self.c.workdir}/worker.log)")

    def new_retrains(self) -> list[str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(RETRAIN)
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        soon = datetime.now(UTC) + timedelta(minutes=1)  # not a cron's future run (the schedules are paused)
        out = [
            str(r.id)
            for r in runs
            if str(r.id) not in self.seen_retrains
            and (r.state_type.value != "SCHEDULED" or (r.expected_start_time and r.expected_start_time <= soon))
        ]
        self.seen_retrains.update(out)
        return out

    def champion(self) -> str | None:
        from mlflow import MlflowClient

        try:
            return str(MlflowClient().get_model_version_by_alias(self.model, "champion").version)
        except Exception:  # noqa: BLE001 - no model or no alias yet
            return None

    def observe(self, week: int, cause: str) -> str | None:
        """Read @champion; a change since the last look is a move that happened."""
        now = self.champion()
        if now != self.current:
            self.moves.append({"week": week, "cause": cause, "from": self.current, "to": now})
        self.current = now
        return now

    # -- one week -------------------------------------------------------------------------------
    def week(self, w: world.Week) -> dict[str, Any]:
        t0 = time.monotonic()
        row: dict[str, Any] = {
            **w.row(),
            "alarm": None,
            "crossed": [],
            "appended": False,
            "retrains": [],
            "champion": None,
        }
        folder = self.c.workdir / "incoming" / f"week-{w.week:02d}"
        world.batch(folder, self.seed, w, self.batch_size, self.offset_std, self.name)
        if "disk full" in w.faults:
            filled = self.c.fill_disk()
            self.faults.append({"week": w.week, "fault": "disk full", "detail": f"{filled / 2**20:.1f} MB filler"})
        killer = None
        if "kill endpoint" in w.faults:
            killer = threading.Timer(1 + 10 * w.faults["kill endpoint"], self._kill_endpoint, args=(w.week,))
            killer.start()

        env = None
        if "kill append" in w.faults:
            step = world.APPEND_STEPS[int(w.faults["kill append"])]
            env = {"STFN_FAULT_APPEND": step}
        params = {"path": str(folder), "dataset": self.name, "root": str(self.c.project)}
        started = time.time()
        fr = self.submit(MONITOR, params, env=env, tags=[f"soak-week-{w.week}"])
        state = self.wait(fr)
        if env:
            kept = self.dvc_md5()
            self.faults.append(
                {
                    "week": w.week,
                    "fault": "kill append",
                    "detail": f"after {env['STFN_FAULT_APPEND']}",
                    "flow_run": state,
                }
            )
            if state == "CRASHED":  # the batch is sent again, as the team's retry would
                fr = self.submit(MONITOR, params, tags=[f"soak-week-{w.week}", "resent"])
                state = self.wait(fr)
            self.faults[-1]["then"] = f"resent: {state}; dataset version at the kill {kept[:8] if kept else '-'}"
        row["monitor_state"] = state
        report = self.report(folder, started)
        if report:
            row.update(alarm=report["alarm"], crossed=report["crossed"], n=report["n"])
        prefix = f"w{w.week:02d}-"
        if landed := self.samples_with(prefix):
            row["appended"] = True
            self.accepted[prefix] = landed
        elif w.kind == "corrupt" or state == "FAILED":
            self.refused.append(prefix)

        triggered = [r for r in self.new_retrains()]
        for fr_id in triggered:
            row["retrains"].append(self.retrain(w, fr_id, "monitor"))
        if w.scheduled_retrain and not triggered:
            row["retrains"].append(
                self.retrain(
                    w,
                    self.submit(RETRAIN, {"dataset": self.name, "root": str(self.c.project)}, tags=["soak-cron"]),
                    "cron",
                )
            )
            self.seen_retrains.update(self.new_retrains())
        self.observe(w.week, "retrain")

        if w.rollback:
            out = run([str(BIN / "stfn"), "rollback"], self.c.project, {**self.c.base_env(), **self.c.env}, check=False)
            row["rollback"] = out.returncode == 0
            row["rollback_said"] = (out.stdout + out.stderr).strip().splitlines()[-1:] if out.returncode else []
            self.observe(w.week, "rollback")
        if killer is not None:
            killer.join()
        self.commit(w)
        if "disk full" in w.faults:
            self.c.free_disk()
        row["champion"] = self.current
        self.c.follows(self.current)  # serve.follow_seconds after a move, the answers come from the new champion
        row["served"] = self.c.answered_by
        row["seconds"] = round(time.monotonic() - t0, 1)
        self.disk.append({"week": w.week, **self.disk_use()})
        self.rows.append(row)
        return row

    def _kill_endpoint(self, week: int) -> None:
        n = self.c.kill_endpoint()
        self.faults.append({"week": week, "fault": "kill endpoint", "detail": f"{n} processes killed"})

    def retrain(self, w: world.Week, fr_id: str, cause: str) -> dict[str, Any]:
        """Wait for a retrain flow run, with this week's faults (one kill per attempt); a crashed
        run is run again, as the next cron would."""
        t0 = time.monotonic()
        out: dict[str, Any] = {"cause": cause, "flow_run": fr_id, "attempts": []}
        versions = {v["version"] for v in self.model_versions()}
        done = {f["fault"] for f in self.faults}
        kills = [f for f in ("kill training", "kill promotion") if f in w.faults and f not in done]
        if "kill mlflow" in w.faults and "kill mlflow" not in done:
            self.kill_mlflow(w.faults["kill mlflow"], w.week)
        while True:
            started = time.time()
            if kills:
                fault = kills.pop(0)
                marker = "models/" + self.name + "/last.pt" if fault == "kill training" else "reports/metrics.json"
                delay = 1 + 3 * w.faults[fault] if fault == "kill training" else w.faults[fault]
                threading.Thread(
                    target=self.kill_when,
                    args=(fr_id, self.c.project / marker, started, delay, fault, w.week),
                    daemon=True,
                ).start()
            state = self.wait(fr_id)
            out["attempts"].append({"flow_run": fr_id, "state": state})
            self.observe(w.week, "retrain")  # a killed attempt may have moved the alias before it died
            if state != "CRASHED" or len(out["attempts"]) > 3:
                break
            fr_id = self.submit(RETRAIN, {"dataset": self.name, "root": str(self.c.project)}, tags=["soak-rerun"])
            self.seen_retrains.add(fr_id)
        if getattr(self, "_mlflow_thread", None) is not None:
            self._mlflow_thread.join()
            self._mlflow_thread = None
        out["state"] = state
        new = [v for v in self.model_versions() if v["version"] not in versions]
        out["registered"] = [{k: v[k] for k in ("version", "decision")} for v in new]
        out["seconds"] = round(time.monotonic() - t0, 1)
        return out

    def kill_when(self, fr_id: str, marker: Path, after: float, delay: float, fault: str, week: int) -> None:
        """Once `marker` is newer than `after` (training checkpointed an epoch, or evaluation wrote
        its metrics), wait `delay` seconds and kill -9 the flow run's process tree."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if marker.exists() and marker.stat().st_mtime > after:
                break
            if self.state(fr_id) in FINAL:
                self.faults.append({"week": week, "fault": fault, "detail": "missed: the run ended first"})
                return
            time.sleep(0.1)
        time.sleep(delay)
        pid = flow_run_process(fr_id)
        killed = kill_tree(pid) if pid else []
        self.faults.append(
            {
                "week": week,
                "fault": fault,
                "detail": f"{delay:.1f} s after {marker.name}: {len(killed)} processes killed"
                if killed
                else "missed: no process",
            }
        )

    def kill_mlflow(self, delay: float, week: int) -> None:
        """kill -9 of the MLflow server `delay` s into the run; restarted 5 s later (`stfn servers start`)."""

        def later() -> None:
            time.sleep(delay)
            pid = self.c.server_pid("mlflow")
            killed = kill_tree(pid) if pid else []
            t0 = time.monotonic()
            time.sleep(5)
            self.c.servers_start()
            self.faults.append(
                {
                    "week": week,
                    "fault": "kill mlflow",
                    "detail": f"{delay:.1f} s into the retrain: "
                    f"{len(killed)} processes killed, back after {time.monotonic() - t0:.1f} s",
                }
            )

        t = threading.Thread(target=later, daemon=True)
        t.start()
        self._mlflow_thread = t

    # -- what the week left ---------------------------------------------------------------------
    def report(self, folder: Path, since: float) -> dict | None:
        found = []
        for f in (self.c.project / "reports" / "monitoring").glob(f"{self.name}-*.json"):
            if f.stat().st_mtime >= since - 1:
                rep = json.loads(f.read_text())
                if rep.get("source") == str(folder):
                    found.append((f.stat().st_mtime, rep))
        return max(found, key=lambda x: x[0])[1] if found else None

    def samples_with(self, prefix: str) -> int:
        import pandas as pd

        samples = pd.read_parquet(
            self.c.project / "data" / "raw" / self.name / "samples.parquet", columns=["sample_id"]
        )
        return int(samples["sample_id"].str.startswith(prefix).sum())

    def dvc_md5(self) -> str | None:
        f = self.c.project / "data" / "raw" / f"{self.name}.dvc"
        return versioning.tracked_md5(f) if f.is_file() else None

    def model_versions(self) -> list[dict[str, Any]]:
        from mlflow import MlflowClient

        vs = MlflowClient().search_model_versions(f"name='{self.model}'")
        return [{"version": str(v.version), "decision": (v.tags or {}).get("decision"), "run_id": v.run_id} for v in vs]

    def commit(self, w: world.Week) -> None:
        env = self.c.base_env()
        dvc_file = f"data/raw/{self.name}.dvc"
        if not run(["git", "status", "--porcelain", dvc_file], self.c.project, env).stdout.strip():
            return
        run(["git", "add", dvc_file], self.c.project, env)
        run(["git", "commit", "-q", "-m", f"week {w.week}: data version with its {w.kind} batch"], self.c.project, env)
        sha = run(["git", "rev-parse", "HEAD"], self.c.project, env).stdout.strip()
        self.versions.append({"week": w.week, "commit": sha, "md5": self.dvc_md5(), "batches": dict(self.accepted)})

    def disk_use(self) -> dict[str, int]:
        p, wd = self.c.project, self.c.workdir
        parts = {
            "data versions (DVC cache and remote)": du(p / ".dvc" / "cache") + du(self.c.remote),
            "the dataset (working copy)": du(p / "data" / "raw"),
            "registered models (MLflow artifacts)": du(p / "mlflow"),
            "checkpoints (models/)": du(p / "models"),
            "features (derived, rewritten)": du(p / "data" / "features"),
            "inference log": du(self.c.log_mount) - du(self.c.log_mount / "filler"),
            "reports": du(p / "reports"),
            "server and worker logs": du(p / ".stfn" / "servers") + du(wd / "worker.log") + du(wd / "serve.log"),
        }
        total = du(wd) - du(wd / "incoming") - du(self.c.log_mount / "filler")
        parts["everything else"] = total - sum(parts.values())
        return parts

    def run_year(self) -> None:
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        for w in self.weeks:
            row = self.week(w)
            verdict = "refused" if row["monitor_state"] == "FAILED" else ("ALARM" if row["alarm"] else "ok")
            moves = ", ".join(f"{m['from']}->{m['to']}" for m in self.moves if m["week"] == w.week)
            self.say(
                f"week {w.week:2d}  {w.kind:8s} {w.detail:20s} {verdict:7s} "
                f"{'appended' if row['appended'] else '-':8s} "
                f"retrains {len(row['retrains'])}  champion v{row['champion']}"
                f"{'  moves ' + moves if moves else ''}"
                f"{'  faults ' + ', '.join(w.faults) if w.faults else ''}  ({row['seconds']:.0f} s)",
            )
