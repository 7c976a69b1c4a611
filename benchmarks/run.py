"""`make bench`: every benchmark in one run, tables printed, figures in reports/bench.json.

The same figures go to docs/data/bench.json, the committed snapshot the docs' performance page is
generated from (docs/generate.py): reports/ is git-ignored, so a fresh clone's `make docs` reads the
snapshot, which names the machine and the date it was measured on.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import REPO, machine, now  # noqa: E402


def sample_load(loads: list[float], done: threading.Event, every: float = 10.0) -> None:
    """The machine's 1-minute load average every `every` seconds until `done`: other work on the
    machine shows in every ratio, so the snapshot records how busy the machine was."""
    while not done.wait(every):
        loads.append(os.getloadavg()[0])


def main() -> None:
    import bench_pipeline
    import bench_scaling
    import bench_serve
    import bench_train

    t0 = time.perf_counter()
    loads: list[float] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(loads, done), daemon=True)
    sampler.start()
    results: dict = {}
    for bench in (bench_train, bench_pipeline, bench_scaling, bench_serve):
        out, text = bench.run()
        results.update(out)
        print(text, flush=True)
    done.set()
    sampler.join()
    loads = loads or [os.getloadavg()[0]]
    load = {"median": round(statistics.median(loads), 2), "max": round(max(loads), 2), "samples": len(loads)}
    results["machine"] = {**machine(), "load_average_1min": load}
    results["date"] = now()
    results["bench_seconds"] = time.perf_counter() - t0
    text = json.dumps(results, indent=2, default=str) + "\n"
    for out in (REPO / "reports" / "bench.json", REPO / "docs" / "data" / "bench.json"):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    print(f"\nmake bench took {results['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()
