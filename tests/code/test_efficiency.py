from pathlib import Path

import numpy as np
import pytest

from stfn.efficiency import flops_per_sample, peak_memory_mb
from stfn.models import STFNConfig

BASE = dict(
    series_channels=4,
    frame_channels=1,
    frame_size=(32, 32),
    frame_steps=[3, 7, 11, 15],
    steps=16,
    n_outputs=10,
    dim=32,
    mfb_factor=2,
    attention_hidden=16,
)


def test_lstm_flops_match_the_analytic_formula():
    """time_only = input Linear + LSTM + pooling + head; the LSTM dominates and is counted on meta."""
    cfg = STFNConfig(**BASE, variant="time_only")
    b_t, c, d, k = cfg.steps, cfg.series_channels, cfg.dim, cfg.attention_hidden
    inp = 2 * b_t * (2 * c) * d
    lstm = b_t * (2 * d * 4 * d + 2 * d * 4 * d)  # input-to-hidden + hidden-to-hidden, 4 gates
    pool = b_t * (2 * d * k * 2 + 2 * k) + 2 * b_t * d  # V, U, w projections and the weighted sum
    head = 2 * d * 2 * d + 2 * (2 * d) * (2 * d) + 2 * (2 * d) * cfg.n_outputs
    assert flops_per_sample(cfg)["flops_forward"] == pytest.approx(inp + lstm + pool + head, rel=0.02)


@pytest.mark.parametrize("spatial", ["cnn", "patches"])
def test_train_step_costs_about_three_forwards(spatial):
    figures = flops_per_sample(STFNConfig(**BASE, spatial_encoder=spatial, heads=2, patch_depth=1))
    assert figures["flops_forward"] > 0
    assert 2.0 <= figures["flops_train_step"] / figures["flops_forward"] <= 3.5


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM (current / peak resident set) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_peak_memory_is_the_processs_peak_resident_set_in_mib():
    before = _status_mib("VmRSS")
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page written
    peak = peak_memory_mb()
    hwm = _status_mib("VmHWM")
    assert float(block[-1]) == 1.0  # held until here
    # the peak counts the block on top of what was resident before it (less a little the
    # allocator may have returned meanwhile), and it is the kernel's high-water mark, in MiB
    assert peak >= before + 256 - 8
    assert peak == pytest.approx(hwm, abs=1.0)
