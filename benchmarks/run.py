"""`make bench`: every benchmark in one run, tables printed, figures in reports/bench.json."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import REPO, cpu  # noqa: E402


def main() -> None:
    import bench_pipeline
    import bench_scaling
    import bench_serve
    import bench_train
    import torch

    t0 = time.perf_counter()
    results: dict = {}
    for bench in (bench_train, bench_pipeline, bench_scaling, bench_serve):
        out, text = bench.run()
        results.update(out)
        print(text, flush=True)
    results["machine"] = {
        "cpu": cpu(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    results["bench_seconds"] = time.perf_counter() - t0
    out = REPO / "reports" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out} in {results['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()
