"""Efficiency figures and the machine they were measured on: parameters, FLOPs per sample
(counted on the `meta` device, where `FlopCounterMode` sees nn.LSTM and attention as the matrix
products they are; on CPU it counts 0 for them), peak memory, the matmul rate, the CPU, cores and
GPU a measurement records."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stfn.models import STFNConfig, build_model, count_parameters


def flops_per_sample(cfg: STFNConfig, batch: int = 2) -> dict[str, float]:
    """Forward and forward+backward FLOPs for one sample (a multiply-add counts 2)."""
    t, c = cfg.steps, cfg.series_channels
    f, fc, (h, w) = len(cfg.frame_steps), cfg.frame_channels, cfg.frame_size
    with torch.device("meta"):
        model = build_model(cfg)
        series, frames = torch.randn(batch, t, c), torch.randn(batch, f, fc, h, w)
        time = torch.rand(batch, 3) if cfg.takes_time else None  # calendar coordinates
    with FlopCounterMode(display=False) as fwd:
        out = model(series, frames, time)["output"]
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    forward = fwd.get_total_flops() / batch
    return {
        "flops_forward": forward,
        "flops_train_step": forward + bwd.get_total_flops() / batch,
        "n_parameters": float(count_parameters(model)),
    }


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, else the peak RSS."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def matmul_gflops(
    size: int = 1024, reps: int = 20, rounds: int = 3, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """The matrix-product GFLOP/s this machine reaches now (best of `rounds`; fp32 on the CPU by
    default): the yardstick the run summary, `make bench` and the GPU benchmark print beside
    their timings (this machine's speed varies)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def cpu() -> dict:
    """The CPU this run had: its model name and the vector units that set the fp32 and bf16 matmul
    rates (a machine is not always the same CPU: the GFLOP/s share depends on it; docs, "Performance").
    Read by hand: torch.backends.cpu.get_cpu_capability() names the ISA level but no AMX or model,
    and platform.processor() is empty on Linux."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux
        pass
    return {"model": model, "avx512f": "avx512f" in flags, "amx_bf16": "amx_bf16" in flags}


def machine() -> dict:
    """What a snapshot under docs/data/ records of the machine it was measured on: the CPU (model,
    vector units), the cores this process may use, torch's threads and version, the GPU if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu(),
        "cores": cores,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def now() -> str:
    """The date and time a measurement was taken, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
