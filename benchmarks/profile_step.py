"""Where the default training step's time goes: a `torch.profiler` breakdown by part of the
model (temporal encoder, spatial encoder, alignment, attention pooling and head), backward,
optimiser and data, on the default dataset's shapes.

Forward time is attributed by module (a `record_function` range around each part's forward);
backward runs in autograd's engine, where ops carry no module, so it is attributed by the family
of each autograd node (convolution, max-pooling, LSTM, matrix products, the rest), inclusive of
the ops the node calls. The optimiser is PyTorch's own range
(`Optimizer.step#AdamW.step`), the data the batch gather from the memory maps.
"""

from __future__ import annotations

import collections
import contextlib

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

PARTS = {"temporal": "LSTM (temporal encoder)", "spatial": "CNN (spatial encoder: convolutions, pooling)",
         "align": "alignment (MFB)", "pool": "attention pooling", "head": "head"}  # fmt: skip


def _label(module: torch.nn.Module, name: str) -> None:
    """Wrap `module.forward` in a profiler range named `name`."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with record_function(f"part::{name}"):
            return forward(*args, **kwargs)

    module.forward = wrapped


def _family(op: str) -> str:
    op = op.lower()
    if "conv" in op:
        return "convolutions"
    if "pool" in op:
        return "max-pooling"
    if "rnn" in op or "lstm" in op:
        return "LSTM"
    if any(k in op for k in ("addmm", "::mm", "mmbackward", "bmm", "matmul", "linear")):
        return "matrix products"
    return "elementwise and the rest"


def breakdown(fs, mp, tp, seed: int = 0, steps: int = 30, warmup: int = 5) -> dict:
    """Seconds per step of each part (forward by module, backward by op family), summing to the
    step's wall time; also the share of each."""
    from stfn.models import build_model
    from stfn.training import batches, loss_fn, model_config

    cfg = model_config(fs, mp)
    model = build_model(cfg, seed).train()
    for name in PARTS:
        if getattr(model, name, None) is not None:
            _label(getattr(model, name), name)
    opt = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    rows = fs.rows("train")
    rng = np.random.default_rng(seed)
    it = (b for _ in iter(int, 1) for b in batches(fs, rows, tp.batch_size, shuffle=True, rng=rng))  # epochs on end

    def step(prof_ctx=contextlib.nullcontext):
        with record_function("part::data"):
            s, f, y, _ = next(it)
            s, f, y = torch.as_tensor(s), torch.as_tensor(f), torch.as_tensor(y)
        with record_function("part::forward"):
            loss = loss_fn(cfg.task, model(s, f)["output"], y)
        opt.zero_grad(set_to_none=True)
        with record_function("part::backward"):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        opt.step()

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = {e.key: e.cpu_time_total for e in events}  # microseconds, inclusive
    wall = sum(total.get(k, 0.0) for k in ("part::data", "part::forward", "part::backward"))
    opt_us = sum(v for k, v in total.items() if k.startswith("Optimizer.step#"))
    rows_: dict[str, float] = collections.OrderedDict()
    rows_["data (batch gather)"] = total.get("part::data", 0.0)
    for name, label in PARTS.items():
        if f"part::{name}" in total:
            rows_[f"forward: {label}"] = total[f"part::{name}"]
    rows_["forward: the rest (loss, glue)"] = total["part::forward"] - sum(total.get(f"part::{n}", 0.0) for n in PARTS)
    # backward: each autograd node run under part::backward (inclusive of the ops it calls), by family
    fam: dict[str, float] = collections.defaultdict(float)
    for e in prof.events():
        if e.name == "part::backward":
            for child in e.cpu_children:
                fam[_family(child.name)] += child.cpu_time_total
    rest = total["part::backward"] - sum(fam.values())  # the engine's own time between nodes
    fam["elementwise and the rest"] += max(rest, 0.0)
    for k in ("convolutions", "max-pooling", "LSTM", "matrix products", "elementwise and the rest"):
        rows_[f"backward: {k}"] = fam.get(k, 0.0)
    rows_["optimiser (AdamW step, grad clip)"] = opt_us
    whole = sum(rows_.values())
    return {
        "steps": steps,
        "batch": tp.batch_size,
        "ms_per_step": whole / steps / 1e3,
        "parts_ms": {k: v / steps / 1e3 for k, v in rows_.items()},
        "shares": {k: v / whole for k, v in rows_.items()},
        "unattributed_wall_fraction": 1 - wall / whole if whole else 0.0,
    }


if __name__ == "__main__":
    import sys

    from common import REPO, project  # noqa: F401

    from stfn.config import Paths, load_params
    from stfn.features import load_features
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    root = project("profile", n)
    params, paths = load_params(root / "params.yaml"), Paths(root)
    prepare(params, paths)
    featurize(params, paths)
    fs = load_features(paths.features_dir("moving-digits"))
    out = breakdown(fs, params.model, params.train)
    print(f"{out['ms_per_step']:.1f} ms per step of {out['batch']} samples ({out['steps']} steps)")
    for k, v in out["parts_ms"].items():
        print(f"  {k:42s} {v:7.2f} ms  {out['shares'][k]:6.1%}")
