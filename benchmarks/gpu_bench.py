"""The training benchmark of `benchmarks/gpu_check.sh`, on one CUDA device: the default dataset
(params.yaml's moving-digits, generated here) and model, trained through `stfn.training.fit` with
every GPU switch on `auto` (bf16 autocast, TF32, fused AdamW, pinned memory, torch.compile).

For the default batch and a large one it reports samples/s of the second epoch (the first pays
for torch.compile) and MFU: achieved FLOP/s (the training step's FLOPs counted on `meta`) over the
device's dense bf16 peak from NVIDIA's datasheet, and over the bf16 matmul FLOP/s measured in
the same run. Imports only torch, numpy, pandas, pyarrow, pyyaml and pydantic (what the device
machine has, or gets from the carried wheels), not the orchestration stack.

    PYTHONPATH=src python benchmarks/gpu_bench.py --out reports/gpu/gpu.json [--junit tests.xml]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peaks (no sparsity), NVIDIA datasheets; the first name found in the device's name
BF16_PEAK = {"H200": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--junit", type=Path, help="the gpu tests' JUnit XML, counted into the JSON")
    ap.add_argument("--batches", default="", help="comma-separated batch sizes (default: params.yaml's and 1024)")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny run on the CPU: checks this script, no figures")
    args = ap.parse_args()

    from stfn import defaults
    from stfn.config import load_params
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits
    from stfn.efficiency import flops_per_sample, matmul_gflops
    from stfn.features import build_features, load_features
    from stfn.training import fit, model_config

    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("gpu_bench: no CUDA device")
    device = "cpu" if args.cpu_smoke else "cuda"
    params = load_params(REPO / "params.yaml")
    md = params.prepare.moving_digits
    if args.cpu_smoke:
        md = md.model_copy(update={"n_train": 256, "n_val": 64, "n_test": 64})
    work = Path(tempfile.mkdtemp(prefix="stfn-gpu-"))
    t0 = time.perf_counter()
    folder = write_dataset(work / "moving-digits", *make_moving_digits(md))
    norm = defaults.value("data.series_norm", params.data.series_norm, "classification")
    feats = build_features(folder, work / "features", params.data.val_fraction, params.data.test_fraction,
                           params.seed, series_norm=norm)  # fmt: skip
    fs = load_features(feats)
    prepare_s = time.perf_counter() - t0
    cfg = model_config(fs, params.model)
    flops = flops_per_sample(cfg)["flops_train_step"]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke run)"
    spec_peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    measured_peak = matmul_gflops(8192, 20, 1, "cuda", torch.bfloat16) * 1e9 if device == "cuda" else None
    batches = [int(b) for b in args.batches.split(",") if b] or [params.train.batch_size, 1024]
    if args.cpu_smoke:
        batches = [64]
    rows = []
    for batch in batches:
        tp = params.train.model_copy(update={"epochs": 2, "patience": 2, "device": device, "batch_size": batch})
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = fit(fs, params.model, tp, params.seed, work / f"fit-{batch}", resume=False)
        sps = result.history[-1]["samples_per_s"]
        rows.append({
            "batch": batch,
            "samples_per_s": sps,
            "first_epoch_samples_per_s": result.history[0]["samples_per_s"],
            "achieved_tflops": flops * sps / 1e12,
            "mfu_vs_datasheet_bf16": flops * sps / spec_peak if spec_peak else None,
            "mfu_vs_measured_bf16_matmul": flops * sps / measured_peak if measured_peak else None,
            "val_accuracy_after_2_epochs": result.history[-1].get("val_accuracy"),
            "gpu_path": result.gpu_path,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dataset": {"name": "moving-digits", "n_train": md.n_train, "prepare_seconds": prepare_s},
        "flops_train_step_per_sample": flops,
        "bf16_peak_datasheet_tflops": spec_peak / 1e12 if spec_peak else None,
        "bf16_matmul_measured_tflops": measured_peak / 1e12 if measured_peak else None,
        "training": rows,
        "tests": junit_counts(args.junit) if args.junit and args.junit.exists() else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
