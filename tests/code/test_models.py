import pytest
import torch

from stfn.models import STFN, STFNConfig, build_model, count_parameters

B, T, C, F, H, W = 3, 16, 4, 4, 32, 32


def config(**kw) -> STFNConfig:
    base = dict(
        series_channels=C,
        frame_channels=1,
        frame_size=(H, W),
        frame_steps=[3, 7, 11, 15],
        steps=T,
        n_outputs=10,
        dim=16,
        mfb_factor=2,
        attention_hidden=16,
    )
    return STFNConfig(**{**base, **kw})


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g), torch.randn(B, F, 1, H, W, generator=g)


@pytest.mark.parametrize("temporal", ["lstm", "gru", "tcn"])
@pytest.mark.parametrize("alignment", ["mfb", "film", "gmu", "bilinear"])
def test_shapes_and_attention_sums_to_one(temporal, alignment):
    model = build_model(config(temporal_encoder=temporal, alignment=alignment), seed=0).eval()
    s, f = inputs()
    out = model(s, f)
    assert out["output"].shape == (B, 10)
    assert out["attention"].shape == (B, F, H // 8, W // 8)
    torch.testing.assert_close(out["attention"].sum(dim=(1, 2, 3)), torch.ones(B))


def test_regression_head_has_one_output():
    model = build_model(config(n_outputs=1, task="regression"), seed=0)
    assert model(*inputs())["output"].shape == (B, 1)


def test_same_seed_same_model_and_output():
    a, b = build_model(config(), seed=5).eval(), build_model(config(), seed=5).eval()
    s, f = inputs()
    torch.testing.assert_close(a(s, f)["output"], b(s, f)["output"])
    c = build_model(config(), seed=6).eval()
    assert not torch.allclose(a(s, f)["output"], c(s, f)["output"])


@pytest.mark.parametrize("temporal", ["lstm", "gru", "tcn"])
@pytest.mark.parametrize("alignment", ["mfb", "film", "gmu", "bilinear"])
def test_alignment_never_reads_a_future_step(alignment, temporal):
    """Z of frame k must not change when series steps after frame k's step change."""
    model = build_model(config(alignment=alignment, temporal_encoder=temporal), seed=0).eval()
    s, f = inputs()
    steps = config().frame_steps
    with torch.no_grad():
        _, _, z = model.fuse(s, f)
        for k, step in enumerate(steps[:-1]):
            s2 = s.clone()
            s2[:, step + 1 :] = torch.randn_like(s2[:, step + 1 :]) * 10
            _, _, z2 = model.fuse(s2, f)
            torch.testing.assert_close(z2[:, : k + 1], z[:, : k + 1])
            assert not torch.allclose(z2[:, k + 1 :], z[:, k + 1 :])


def test_missing_values_are_masked_not_propagated():
    model = build_model(config(), seed=0).eval()
    s, f = inputs()
    s[0, 2, 1] = float("nan")
    out = model(s, f)["output"]
    assert torch.isfinite(out).all()
    s_zero = s.clone()
    s_zero[0, 2, 1] = 0.0  # a real zero reading differs from a missing one
    assert not torch.allclose(model(s_zero, f)["output"][0], out[0])


@pytest.mark.parametrize("alignment", ["mfb", "film", "gmu", "bilinear"])
def test_gradient_reaches_both_encoders(alignment):
    model = build_model(config(alignment=alignment), seed=0)
    s, f = inputs()
    model(s, f)["output"].sum().backward()
    for part in (model.temporal, model.spatial, model.align, model.pool):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_parameter_count_is_reported():
    assert 1_000 < count_parameters(STFN(config())) < 1_000_000
    model = STFN(config())
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    two = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert count_parameters(two) == (3 * 4 + 4) + (4 * 2 + 2)
    two[0].requires_grad_(False)
    assert count_parameters(two) == 4 * 2 + 2  # trainable parameters only


@pytest.mark.parametrize("variant", ["time_only", "space_only", "late_concat"])
def test_ablation_baselines_shapes_and_size_matched(variant):
    cfg = config(variant=variant, dim=64, attention_hidden=64, mfb_factor=4)
    model = build_model(cfg, seed=0).eval()
    out = model(*inputs())
    assert out["output"].shape == (B, 10)
    if variant != "time_only":
        assert out["attention"].shape == (B, F, H // 8, W // 8)
        torch.testing.assert_close(out["attention"].sum(dim=(1, 2, 3)), torch.ones(B))
    stfn = count_parameters(build_model(config(dim=64, attention_hidden=64, mfb_factor=4)))
    ratio = count_parameters(model) / stfn
    assert 0.5 <= ratio <= 2.0, f"{variant} has {ratio:.2f}x the parameters of STFN"


def test_time_only_ignores_the_frames_and_space_only_the_series():
    s, f = inputs()
    t = build_model(config(variant="time_only"), seed=0).eval()
    torch.testing.assert_close(t(s, f)["output"], t(s, torch.zeros_like(f))["output"])
    v = build_model(config(variant="space_only"), seed=0).eval()
    torch.testing.assert_close(v(s, f)["output"], v(torch.zeros_like(s), f)["output"])


def test_unknown_variant_and_too_wide_bilinear_are_clear_errors():
    with pytest.raises(ValueError, match=r"(?s)variant.*'stfn', 'time_only', 'space_only' or 'late_concat'"):
        config(variant="magic")  # the model's config is params.yaml's `model` section: checked when made
    with pytest.raises(ValueError, match="too large"):
        build_model(config(alignment="bilinear", dim=128))


@pytest.mark.parametrize("stem", ["linear", "conv"])
@pytest.mark.parametrize("tubelet", [1, 2])
def test_spacetime_patches_shapes_and_alignment_at_tubelet_end(tubelet, stem):
    cfg = config(spatial_encoder="patches", tubelet=tubelet, patch=8, patch_depth=1, heads=2, patch_stem=stem)
    model = build_model(cfg, seed=0).eval()
    s, f = inputs()
    out = model(s, f)
    assert out["output"].shape == (B, 10)
    assert out["attention"].shape == (B, F // tubelet, H // 8, W // 8)
    torch.testing.assert_close(out["attention"].sum(dim=(1, 2, 3)), torch.ones(B))
    # tubelet k is aligned with the step of its last frame
    assert model.frame_steps.tolist() == cfg.frame_steps[tubelet - 1 :: tubelet]


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_spacetime_time_attention_is_causal(stem):
    """A tubelet's features never depend on later frames (the conv stem works frame by frame)."""
    from stfn.patches import SpacetimePatchEmbed

    enc = SpacetimePatchEmbed(1, 16, (H, W), F, tubelet=1, patch=8, depth=2, heads=2, stem=stem).eval()
    _, f = inputs()
    f2 = f.clone()
    f2[:, 2:] = torch.randn_like(f2[:, 2:])
    with torch.no_grad():
        a, b = enc(f), enc(f2)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_patch_sizes_must_divide_the_frames():
    with pytest.raises(ValueError, match="model.tubelet"):
        build_model(config(spatial_encoder="patches", tubelet=3))
    with pytest.raises(ValueError, match="multiple of 4 with model.patch_stem conv"):
        build_model(config(spatial_encoder="patches", patch=2, patch_stem="conv"))


def test_conv_stem_tokens_see_only_their_patch_neighbourhood():
    """With the conv stem a token's embedding (before the blocks) depends on pixels of its own
    patch and a few around it (the stem's receptive field), not on the far side of the frame."""
    from stfn.patches import SpacetimePatchEmbed

    enc = SpacetimePatchEmbed(1, 16, (H, W), F, patch=8, depth=0, heads=2, stem="conv").eval()
    _, f = inputs()
    f2 = f.clone()
    f2[..., 24:, 24:] = torch.randn_like(f2[..., 24:, 24:])  # the bottom-right patch only
    with torch.no_grad():
        a, b = enc(f), enc(f2)
    grid = lambda x: x.view(B, F, 4, 4, 16)  # noqa: E731
    torch.testing.assert_close(grid(a)[:, :, :2, :2], grid(b)[:, :, :2, :2])  # far cells unchanged
    assert not torch.allclose(grid(a)[:, :, 3, 3], grid(b)[:, :, 3, 3])


def test_layer_scale_starts_each_block_near_the_identity_and_drop_path_only_trains():
    from stfn.patches import FactorisedBlock

    x = torch.randn(2, F, 16, 16)
    block = FactorisedBlock(16, 2, layer_scale=1e-4).eval()
    assert block.gains.shape == (3, 16)
    assert (block(x) - x).abs().max() < 1e-2  # three branches times 1e-4
    assert FactorisedBlock(16, 2).gains is None  # off: no parameter, the block as before
    # the gains folded into each branch's last linear layer = each branch's output times its gain
    with torch.no_grad():
        block.gains.copy_(torch.rand(3, 16))
    g = block.gains
    y = x + block.space(block.norm_s(x).flatten(0, 1)).view_as(x) * g[0]
    y = y + block.time.along_time(block.norm_t(y)) * g[1]
    y = y + block.mlp(block.norm_m(y)) * g[2]
    torch.testing.assert_close(block(x), y)
    dropped = FactorisedBlock(16, 2, drop_path=0.9)
    xs = torch.randn(200, F, 16, 16)
    torch.testing.assert_close(dropped.eval()(xs), dropped.eval()(xs))  # deterministic in eval
    torch.manual_seed(0)
    untouched = ((dropped.train()(xs) - xs).flatten(1).abs().amax(1) == 0).float().mean()
    assert 0.6 < untouched < 0.85  # each sample skips all three branches with p = 0.9^3 = 0.73


def test_multi_head_attention_pooling_weights_sum_to_one():
    model = build_model(config(attention_heads=3), seed=0).eval()
    out = model(*inputs())
    assert out["output"].shape == (B, 10)
    torch.testing.assert_close(out["attention"].sum(dim=(1, 2, 3)), torch.ones(B))


def test_linear_skip_adds_a_linear_map_of_the_series_window():
    model = build_model(config(n_outputs=1, task="regression", linear_skip=True), seed=0).eval()
    plain = build_model(config(n_outputs=1, task="regression"), seed=0)
    assert plain.skip is None and count_parameters(model) == count_parameters(plain) + T * C + 1
    s, f = inputs()
    with torch.no_grad():
        with_skip = model(s, f)["output"]
        model.skip.weight.zero_()
        model.skip.bias.zero_()
        without = model(s, f)["output"]
        expected = torch.nn.functional.linear(s.flatten(1), build_model(model.cfg, seed=0).skip.weight)
    assert with_skip.shape == (B, 1)
    bias = build_model(model.cfg, seed=0).skip.bias
    assert torch.allclose(with_skip - without, expected + bias, atol=1e-5)
    s[0, 3, 1] = float("nan")  # a missing reading does not poison the skip path
    with torch.no_grad():
        assert torch.isfinite(model(s, f)["output"]).all()


@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_regression_losses(loss):
    from stfn.training import loss_fn

    out, y = torch.tensor([[0.0], [3.0]]), torch.tensor([0.0, 0.0])
    value = float(loss_fn("regression", out, y, loss))
    assert value == pytest.approx({"mse": 4.5, "l1": 1.5, "huber": 1.25}[loss])


def test_patch_embedding_as_a_matrix_product_equals_the_strided_conv3d():
    import torch
    from einops import rearrange

    from stfn.patches import SpacetimePatchEmbed

    emb = SpacetimePatchEmbed(2, 16, (16, 24), 4, tubelet=2, patch=8, depth=0, heads=4)
    frames = torch.randn(3, 4, 2, 16, 24)
    conv = rearrange(emb.proj(rearrange(frames, "b f c h w -> b c f h w")), "b d t h w -> b t (h w) d")
    expected = emb.norm(conv + emb.pos_space + emb.pos_time)
    assert torch.allclose(emb(frames), expected, atol=1e-5)


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_overlapping_patches_equal_a_padded_conv3d_with_a_window_twice_the_patch(stem):
    import torch.nn.functional as F
    from einops import rearrange

    from stfn.patches import SpacetimePatchEmbed

    emb = SpacetimePatchEmbed(2, 16, (16, 24), 4, tubelet=2, patch=8, depth=0, heads=4, stem=stem, overlap=True)
    frames = torch.randn(3, 4, 2, 16, 24)
    c = emb.cell
    assert emb.proj.weight.shape[-2:] == (2 * c, 2 * c)
    maps = frames if emb.stem is None else torch.stack([emb.stem(frames[:, i]) for i in range(4)], 1)
    conv = F.conv3d(
        rearrange(maps, "b f c h w -> b c f h w"),
        emb.proj.weight,
        emb.proj.bias,
        stride=(2, c, c),
        padding=(0, c // 2, c // 2),
    )
    expected = emb.norm(rearrange(conv, "b d t h w -> b t (h w) d") + emb.pos_space + emb.pos_time)
    assert torch.allclose(emb(frames), expected, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_time_attention_on_strided_views_equals_attention_on_the_rearranged_cells(causal):
    """`along_time` attends along T for each grid cell without rearranging to (B N, T, D): the same
    outputs and gradients as `forward` on that rearrangement."""
    from einops import rearrange

    from stfn.patches import SelfAttention

    torch.manual_seed(0)
    att = SelfAttention(16, heads=4)
    x = torch.randn(3, 5, 6, 16, requires_grad=True)
    fast = att.along_time(x, causal=causal)
    ref = rearrange(att(rearrange(x, "b t n d -> (b n) t d"), causal=causal), "(b n) t d -> b t n d", b=3)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(ref)
    grads_fast = torch.autograd.grad(fast, [x, *att.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *att.parameters()], g)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cnn_stems_see_the_same_grid_and_old_checkpoints_keep_theirs():
    """The unshuffled stem and the max-pooling one give the same grid from the same number
    of multiply-adds; a checkpoint's config written before the stem was a choice rebuilds the
    max-pooling stem, so its weights load."""
    from torch.utils.flop_counter import FlopCounterMode

    from stfn.encoders import SpatialEncoder

    frames = torch.randn(2 * F, 1, H, W)
    flops = {}
    for stem in ("unshuffle", "maxpool"):
        enc = SpatialEncoder(1, 16, (H, W), stem=stem)
        with FlopCounterMode(display=False) as count:
            out = enc(frames.view(2, F, 1, H, W))
        assert out.shape == (2, F, (H // 8) * (W // 8), 16)
        flops[stem] = count.get_total_flops()
    assert flops["unshuffle"] == flops["maxpool"]
    assert config().cnn_stem == "unshuffle"
    old = {k: v for k, v in config().to_dict().items() if k != "cnn_stem"}
    legacy = build_model(STFNConfig.from_dict(old))
    assert legacy.spatial.net[0].weight.shape == (16, 1, 3, 3)  # conv on the full frame, then the pool
    new = build_model(STFNConfig.from_dict(config().to_dict()))
    assert new.spatial.net[1].weight.shape == (16, 4, 3, 3)  # conv on the unshuffled 2x2 blocks
    with pytest.raises(ValueError, match="unknown cnn stem"):
        SpatialEncoder(1, 16, (H, W), stem="strided")


def test_a_patches_checkpoint_without_the_stem_key_rebuilds_its_linear_embedding():
    """A config written before the patch stem, overlap, LayerScale and stochastic depth were
    settings rebuilds the encoder it was trained with, whatever today's defaults are."""
    old = {
        k: v
        for k, v in config(spatial_encoder="patches", patch_depth=1, heads=2).to_dict().items()
        if k not in ("patch_stem", "patch_overlap", "layer_scale", "drop_path", "cnn_stem")
    }
    model = build_model(STFNConfig.from_dict(old))
    assert model.spatial.stem is None and not model.spatial.overlap
    assert model.spatial.proj.weight.shape == (16, 1, 1, 8, 8)  # one linear map of 8x8 raw pixels
    assert all(b.gains is None and b.drop_path == 0 for b in model.spatial.blocks)
    hybrid = build_model(config(spatial_encoder="patches", patch_stem="cnn", patch_depth=1, heads=2))
    assert hybrid.spatial.proj.weight.shape == (16, 16, 1, 1, 1)  # a 1x1 cell of the cnn's D channels
