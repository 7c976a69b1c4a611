"""Efficiency figures: parameters, FLOPs per sample (counted on the `meta` device, where
`FlopCounterMode` sees nn.LSTM and attention as the matrix products they are; on CPU it counts
0 for them), peak memory."""

from __future__ import annotations

import resource
import sys
import time

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
    with FlopCounterMode(display=False) as fwd:
        out = model(series, frames)["output"]
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
