"""The invariants a year must keep, checked on what the real parts hold at its end (the dataset,
the git history and the DVC remote, the MLflow server, the harness's own record of the moves and
requests), a table of them, the report, and a picture of the year."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from soak.cluster import BIN, run
from soak.year import Year

ALARM_LEVEL = 0.01  # a false-alarm count is "beyond monitor.alpha" when a binomial test rejects at this level


def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"invariant": name, "passed": bool(passed), "detail": detail}


def invariants(y: Year, params: dict, min_promotions: int, bounded_mb: float) -> list[dict[str, Any]]:
    c = y.c
    out = []
    samples = pd.read_parquet(c.project / "data" / "raw" / y.name / "samples.parquet", columns=["sample_id"])
    ids = samples["sample_id"]
    counts = {p: int(ids.str.startswith(p).sum()) for p in y.accepted}
    wrong = {p: (counts[p], n) for p, n in y.accepted.items() if counts[p] != n}
    out.append(
        check(
            "every accepted batch is in the latest data version exactly once",
            not wrong and ids.is_unique,
            f"{len(y.accepted)} batches, {sum(y.accepted.values())} samples"
            + (f"; wrong: {wrong}" if wrong else "")
            + ("" if ids.is_unique else "; duplicate ids"),
        )
    )
    appended_bad = [p for p in y.refused if ids.str.startswith(p).any()]
    corrupt = [r for r in y.rows if r["kind"] == "corrupt"]
    refused_all = all(r["monitor_state"] == "FAILED" for r in corrupt)
    out.append(
        check(
            "no corrupt batch was appended",
            not appended_bad and refused_all,
            f"{len(corrupt)} corrupt batches, each refused by validation (flow run FAILED)"
            if not appended_bad and refused_all
            else f"appended: {appended_bad}; states {[r['monitor_state'] for r in corrupt]}",
        )
    )
    out.append(restores(y))
    out.append(alias_history(y, min_promotions))
    out.append(no_running_run())
    req = c.requests
    down = [d for d in c.downtime if d["seconds"] is not None]
    out.append(
        check(
            "the request loop saw no failure while the endpoint was up",
            req["failed_while_up"] == 0,
            f"{req['ok']} answered, {req['failed_while_up']} failed while up, {req['failed_while_down']} "
            f"while down ({len(down)} outages, {sum(d['seconds'] for d in down):.1f} s in all)"
            + (f"; first failures: {req['failures'][:3]}" if req["failures"] else ""),
        )
    )
    lagging = [f"week {r['week']}: v{r['served']} answered, v{r['champion']} champion" for r in y.rows
               if r["served"] != r["champion"]]  # fmt: skip
    out.append(
        check("the endpoint follows @champion", not lagging,
              f"at the end of each of {len(y.rows)} weeks the answers came from the champion "
              f"(versions answered: {', '.join(sorted({r['served'] for r in y.rows if r['served']}, key=int))})"
              if not lagging else "; ".join(lagging[:5]))
    )  # fmt: skip
    clean = [r for r in y.rows if r["kind"] == "clean" and r["alarm"] is not None]
    alarms = sum(bool(r["alarm"]) for r in clean)
    alpha = params["monitor"]["alpha"]
    p = binomtest(alarms, len(clean), alpha, alternative="greater").pvalue if clean else 1.0
    out.append(
        check(
            "false alarms on clean batches within monitor.alpha's rate",
            p >= ALARM_LEVEL,
            f"{alarms} of {len(clean)} clean batches alarmed (alpha {alpha}: binomial p {p:.3f}, "
            f"refused below {ALARM_LEVEL})"
            + "".join(f"; week {r['week']}: {', '.join(r['crossed'])}" for r in clean if r["alarm"]),
        )
    )
    drifted = [r for r in y.rows if r["kind"] == "drifted"]
    missed = [f"week {r['week']} ({r['detail']})" for r in drifted if not r["alarm"]]
    out.append(
        check(
            "every drifted batch alarmed",
            bool(drifted) and not missed,
            f"{len(drifted) - len(missed)} of {len(drifted)}" + (f"; missed {missed}" if missed else ""),
        )
    )
    out.append(disk(y, params, bounded_mb))
    injected = {f["fault"] for f in y.faults if not str(f.get("detail", "")).startswith("missed")}
    planned = {f for w in y.weeks for f in w.faults}
    out.append(
        check(
            "every planned fault was injected",
            planned <= injected,
            ", ".join(sorted(injected))
            + (f"; not injected: {sorted(planned - injected)}" if planned - injected else ""),
        )
    )
    return out


def restores(y: Year) -> dict[str, Any]:
    """Every data version in git history, checked out in a fresh clone and pulled from the DVC
    remote, holds exactly the batches accepted up to it."""
    clone = y.c.workdir / "restore"
    shutil.rmtree(clone, ignore_errors=True)
    env = y.c.base_env()
    run(["git", "clone", "-q", str(y.c.project), str(clone)], y.c.workdir, env)
    bad = []
    for v in y.versions:
        run(["git", "checkout", "-q", v["commit"]], clone, env)
        pulled = run([str(BIN / "dvc"), "pull", "-q", "--force"], clone, env, check=False)
        status = run([str(BIN / "dvc"), "status", "-q"], clone, env, check=False)
        if pulled.returncode or status.returncode:
            bad.append(f"week {v['week']}: dvc pull/status exited {pulled.returncode}/{status.returncode}")
            continue
        ids = pd.read_parquet(clone / "data" / "raw" / y.name / "samples.parquet", columns=["sample_id"])["sample_id"]
        have = {p: int(ids.str.startswith(p).sum()) for p in y.accepted if ids.str.startswith(p).any()}
        if have != v["batches"]:
            bad.append(f"week {v['week']}: holds {have}, expected {v['batches']}")
    shutil.rmtree(clone, ignore_errors=True)
    return check(
        "every data version in git history restores (fresh clone, dvc pull)",
        not bad,
        f"{len(y.versions)} versions" + (f"; {bad[:3]}" if bad else ""),
    )


def alias_history(y: Year, min_promotions: int) -> dict[str, Any]:
    from stfn import registry

    history = registry.champion_history(y.model)
    recorded = [(e["action"], e["version"]) for e in history]
    seen = [m["to"] for m in y.moves]
    promotions = sum(a == "promote" for a, _ in recorded) - 1  # the first champion is not a move between models
    rollbacks = sum(a == "rollback" for a, _ in recorded)
    same = [v for _, v in recorded] == seen
    ok = same and promotions >= min_promotions and rollbacks >= 1
    detail = f"{len(recorded)} recorded moves ({promotions} promotions after the first, {rollbacks} rollbacks)"
    if not same:
        detail += f"; recorded {[v for _, v in recorded]} but the alias went {seen}"
    if promotions < min_promotions or rollbacks < 1:
        detail += f"; a year needs at least {min_promotions} promotions and a rollback"
    return check("the alias history equals the moves that happened", ok, detail)


def no_running_run() -> dict[str, Any]:
    from mlflow.entities import ViewType

    from mlflow import MlflowClient

    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    running = client.search_runs(exps, "attributes.status = 'RUNNING'", run_view_type=ViewType.ALL)
    total = len(client.search_runs(exps, "", run_view_type=ViewType.ALL, max_results=5000))
    killed = len(client.search_runs(exps, "attributes.status = 'KILLED'", run_view_type=ViewType.ALL))
    return check(
        "no MLflow run is left RUNNING",
        not running,
        f"{total} runs, {killed} KILLED" + (f"; RUNNING: {[r.info.run_id for r in running]}" if running else ""),
    )


def disk(y: Year, params: dict, bounded_mb: float) -> dict[str, Any]:
    """The inference log within serve.log_max_mb (plus the file being written), the checkpoints
    the same size as after the first training, everything else (what is neither kept data nor
    kept models) within `bounded_mb` of its first week."""
    first, last = y.disk[0], y.disk[-1]
    cap = params["serve"]["log_max_mb"] * 2**20
    log_max = max(d["inference log"] for d in y.disk)
    ck = [d["checkpoints (models/)"] for d in y.disk if d["checkpoints (models/)"]]
    other = last["everything else"] - first["everything else"]
    ok = log_max <= cap * 1.1 and (not ck or max(ck) <= 1.5 * ck[0]) and other <= bounded_mb * 2**20
    mb = lambda b: f"{b / 2**20:.1f} MB"  # noqa: E731
    return check(
        "disk grows only with what must be kept",
        ok,
        f"inference log at most {mb(log_max)} (cap {mb(cap)}); checkpoints {mb(ck[0]) if ck else '-'} -> "
        f"{mb(max(ck)) if ck else '-'}; data versions {mb(first['data versions (DVC cache and remote)'])} -> "
        f"{mb(last['data versions (DVC cache and remote)'])}; registered models "
        f"{mb(first['registered models (MLflow artifacts)'])} -> "
        f"{mb(last['registered models (MLflow artifacts)'])}; everything else +{mb(other)} "
        f"(bound {bounded_mb:g} MB)",
    )


def table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["invariant"]) for r in rows)
    lines = [f"{'invariant':{width}s}  result  detail"]
    lines += [f"{r['invariant']:{width}s}  {'ok' if r['passed'] else 'FAILED':6s}  {r['detail']}" for r in rows]
    return "\n".join(lines)


def plot(y: Year, path: Path) -> Path:
    """The year at a glance: each week's batch and verdict, the champion, the faults; disk by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=[1.2, 1])
    colours = {"clean": "tab:green", "drifted": "tab:orange", "corrupt": "tab:red"}
    xs, vs = [], []  # @champion over the year: each move at its week (several in a week spread over it)
    for w in sorted({m["week"] for m in y.moves}):
        here = [m for m in y.moves if m["week"] == w]
        for i, m in enumerate(here):
            xs.append(w + i / len(here))
            vs.append(int(m["to"]) if m["to"] else 0)
    xs.append(len(y.rows) + 0.5)
    vs.append(vs[-1] if vs else 0)
    top.step(xs, vs, where="post", color="grey", lw=1.2, label="@champion")
    champion_at = lambda week: vs[max(i for i, x in enumerate(xs) if x <= week + 0.99)] if xs else 0  # noqa: E731
    for r in y.rows:
        top.scatter(
            r["week"],
            champion_at(r["week"]),
            color=colours[r["kind"]],
            marker="X" if r["alarm"] else "o",
            s=45,
            zorder=3,
        )
    for week in sorted({f["week"] for f in y.faults}):
        top.axvline(week, color="black", lw=0.6, ls=":")
        label = ", ".join(dict.fromkeys(f["fault"] for f in y.faults if f["week"] == week))
        top.text(
            week, 0.98, label + " ", transform=top.get_xaxis_transform(), rotation=90, fontsize=7, va="top", ha="right"
        )
    for kind, colour in colours.items():
        top.scatter([], [], color=colour, label=f"{kind} batch")
    top.scatter([], [], color="grey", marker="X", label="the monitor alarmed")
    top.set_ylabel("@champion version")
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncol=5, frameon=False)
    fig.suptitle(f"A simulated year ({len(y.rows)} weeks, seed {y.seed})")
    weeks = [d["week"] for d in y.disk]
    keys = [k for k in y.disk[0] if k != "week"]
    for k in keys:  # one line a kind, on a log scale: what grows and what stays bounded both show
        bottom.plot(weeks, [max(d[k], 1) / 2**20 for d in y.disk], label=k, lw=1.5)
    bottom.set_yscale("log")
    bottom.set_ylim(bottom=0.01)  # an empty folder (the inference log before any traffic) sits on the floor
    bottom.set_ylabel("disk (MB, log scale)")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    bottom.set_xlabel("week")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
