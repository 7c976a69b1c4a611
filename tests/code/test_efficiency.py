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


def test_peak_memory_is_positive():
    assert peak_memory_mb() > 10
