"""Scaling: validate, featurize and one epoch of training at N, 2N and 4N samples. Each
measurement runs in a fresh process, so its peak RSS (ru_maxrss) is its own: time should grow
linearly, the peak RSS of validate and featurize stay roughly flat (frames are streamed in
chunks). Peak RSS is the process's VmHWM (Linux). Validate and featurize take seconds or less at
these sizes, so each runs `REPEATS` times (fresh processes; featurize rebuilds every time) and
reports its fastest time and its median peak RSS: one disturbed second would otherwise be the
growth factor."""

from __future__ import annotations

import json
import subprocess
import sys

from common import STATE, project, table  # noqa: I001

CHILD = """
import json, resource, sys, time
from pathlib import Path
from stfn.stages.featurize import featurize
from stfn.stages.prepare import prepare
from stfn.stages.train import train
from stfn.stages.validate import validate
from stfn.config import Paths, load_params
root, what = Path(sys.argv[1]), sys.argv[2]
params, paths = load_params(root / "params.yaml"), Paths(root)
if what == "featurize":
    (paths.features_dir(params.data.dataset) / "inputs.json").unlink(missing_ok=True)  # no "up to date" skip
t0 = time.perf_counter()
if what == "validate":
    validate(params, paths)
elif what == "featurize":
    featurize(params, paths)
else:
    train(params, paths)
# VmHWM: this process's own peak (ru_maxrss would carry the launching process's over exec)
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
rss_mb = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_mb": rss_mb}))
"""


REPEATS = {"validate": 3, "featurize": 3, "train": 1}


def _measure_once(root, what: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), what], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} at {root}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(root, what: str) -> dict:
    import statistics

    runs = [_measure_once(root, what) for _ in range(REPEATS[what])]
    return {
        "seconds": min(r["seconds"] for r in runs),
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "runs": len(runs),
    }


def run(n: int = 1500) -> tuple[dict, str]:
    from stfn.config import Paths, load_params
    from stfn.stages.prepare import prepare

    sizes = [n, 2 * n, 4 * n]
    rows, res = [], {}
    for k in sizes:
        root = project(f"scale-{k}", k, **{"train.epochs": 1, "train.patience": 1})
        prepare(load_params(root / "params.yaml"), Paths(root))
        res[k] = {what: _measure(root, what) for what in ("validate", "featurize", "train")}
        for what, m in res[k].items():
            rows.append((k, what, f"{m['seconds']:.2f}", f"{m['rss_mb']:.0f}"))
    g = lambda what, key: res[4 * n][what][key] / res[n][what][key]  # noqa: E731
    out = {
        "featurize_rss_growth_4x": g("featurize", "rss_mb"),
        "validate_rss_growth_4x": g("validate", "rss_mb"),
        "time_growth_4x": {what: g(what, "seconds") for what in ("validate", "featurize", "train")},
        "scaling": {str(k): v for k, v in res.items()},
    }
    text = table(
        f"3. Scaling (N = {n} training samples; fresh process each; validate and featurize: the fastest "
        f"of {REPEATS['featurize']})",
        rows,
        ("samples", "stage", "seconds", "peak RSS MB"),
    )
    text += "\n4N / N: " + ", ".join(
        [f"{w} time {out['time_growth_4x'][w]:.2f}x" for w in ("validate", "featurize", "train")]
        + [f"validate RSS {out['validate_rss_growth_4x']:.2f}x", f"featurize RSS {out['featurize_rss_growth_4x']:.2f}x"]
    )
    return out, text


if __name__ == "__main__":
    print(STATE)
    print(run()[1])
