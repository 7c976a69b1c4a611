"""Training throughput, measured side by side in one process:

- ours: `stfn.training.fit` (memory-mapped, pre-normalised features, batches gathered in order),
  against the peers a user would pick:
  (a) the plain loop: the same model, optimiser, schedule, clipping and batch size over the same
      features held in memory as tensors, batches indexed from them (the limit of our data path);
  (b) PyTorch Lightning's `Trainer` on the same model as a `LightningModule` (the same optimiser,
      schedule and clipping), fed by a `DataLoader` over a `TensorDataset` of the same tensors;
  (c) a per-sample `Dataset` that reads each sample's series from `series.parquet` (pyarrow filter
      on sample_id) and its frames from `frames.npy` loaded into RAM: the loop people write first;
  each an epoch's training (no validation) over the same rows, the sides taken in turn, rounds
  repeated, each side's best figure kept and the per-round ratios' median reported;
- a `torch.profiler` breakdown of the default training step (benchmarks/profile_step.py);
- our spacetime-patch encoder (`SpacetimePatchEmbed` + factorised blocks) vs vit-pytorch's ViViT behind the same stem
  (factorised self-attention) at the same width, depth, heads, MLP width, patch and tubelet:
  forward + backward + AdamW step of the spatial branch alone;
- achieved GFLOP/s of our training step (FLOPs counted on `meta`) / the fp32 matmul GFLOP/s this
  machine reaches in the same run: per round (the matmul measured right before each epoch of ours),
  and the median of the rounds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import REPO, best_of, cpu, project, table  # noqa: I001

from stfn.efficiency import matmul_gflops


class ParquetDataset(torch.utils.data.Dataset):
    """What a user would write first: one sample per __getitem__, read from the dataset's files."""

    def __init__(self, folder: Path, ids: list[str]):
        from stfn.data.contract import load_spec

        spec = load_spec(folder)
        self.series_path, self.ids = folder / "series.parquet", ids
        self.channels = [c.name for c in spec.series.channels]
        samples = pd.read_parquet(folder / "samples.parquet")
        self.row = {sid: i for i, sid in enumerate(samples["sample_id"].astype(str))}
        self.labels = samples["label"].to_numpy()
        self.frames = np.load(folder / "frames.npy")  # into RAM: no memmap

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        sid = self.ids[i]
        s = pd.read_parquet(self.series_path, filters=[("sample_id", "==", sid)]).sort_values("step")
        x = s[self.channels].to_numpy(np.float32)
        x = x - np.nanmedian(x, axis=0, keepdims=True)
        r = self.row[sid]
        return torch.from_numpy(x), torch.from_numpy(self.frames[r].astype(np.float32)), int(self.labels[r])


def reference_samples_per_s(folder: Path, ids: list[str], cfg, batch_size: int, lr: float) -> float:
    from stfn.models import build_model
    from stfn.training import loss_fn

    model = build_model(cfg, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(ParquetDataset(folder, ids), batch_size=batch_size, shuffle=True)
    t0, n = time.perf_counter(), 0
    for s, f, y in loader:
        loss = loss_fn("classification", model(s, f)["output"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t0)


def _schedule(opt: torch.optim.Optimizer, tp, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    from stfn.training import warmup_cosine

    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, tp.warmup_fraction))


def in_memory(fs, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training rows' features as tensors in RAM (what the plain loop and Lightning get)."""
    idx = np.sort(rows)
    return (torch.from_numpy(np.asarray(fs.series[idx])), torch.from_numpy(np.asarray(fs.frames[idx])),
            torch.from_numpy(np.asarray(fs.labels[idx])))  # fmt: skip


def plain_samples_per_s(data, cfg, tp, seed: int) -> float:
    """The plain loop over in-memory tensors: a shuffled index per epoch, batches sliced from
    the tensors, the same model, AdamW, warm-up + cosine schedule, clipping and batch size."""
    from stfn.models import build_model
    from stfn.training import loss_fn

    series, frames, labels = data
    model = build_model(cfg, seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    sched = _schedule(opt, tp, -(-len(labels) // tp.batch_size))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    order = torch.randperm(len(labels), generator=g)
    for i in range(0, len(order), tp.batch_size):
        b = order[i : i + tp.batch_size]
        loss = loss_fn(cfg.task, model(series[b], frames[b])["output"], labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        opt.step()
        sched.step()
    return len(labels) / (time.perf_counter() - t0)


def lightning_samples_per_s(data, cfg, tp, seed: int) -> float:
    """PyTorch Lightning's Trainer, one epoch, the same model and optimisation; the epoch's
    time is taken from its own hooks (start-up and teardown not counted)."""
    try:
        import lightning as L
    except ImportError as exc:
        raise RuntimeError("lightning is not installed: `make bench` installs the bench extra") from exc
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its banners, once per Trainer
    warnings.filterwarnings("ignore", module="lightning")
    from stfn.models import build_model
    from stfn.training import loss_fn

    series, frames, labels = data
    steps = -(-len(labels) // tp.batch_size)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_model(cfg, seed=seed)

        def training_step(self, batch, _):
            s, f, y = batch
            return loss_fn(cfg.task, self.model(s, f)["output"], y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": _schedule(opt, tp, steps), "interval": "step"}}

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, *_):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, *_):
            self.seconds = time.perf_counter() - self.t0

    timer = EpochTimer()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(series, frames, labels), batch_size=tp.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, gradient_clip_val=tp.grad_clip, logger=False, callbacks=[timer],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Module(), loader)
    return len(labels) / timer.seconds


def _trainer(model: torch.nn.Module, x: torch.Tensor):
    """One training step of `model` on `x` (forward, backward, AdamW step), as a callable."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        model(x).float().mean().backward()
        opt.step()
        opt.zero_grad()

    return step


def interleaved_step_times(steps: dict, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds of each side's single steps, taken in turn (A B C, then C B A, ...): a slow spell of
    the shared machine lands on every side within a fraction of a second, not on one side's block."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names, times = list(steps), {name: [] for name in steps}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(ours: list[float], peer: list[float]) -> dict:
    """Throughput ratio ours/peer from step times taken in turn: each round's ratio (its steps
    ran within a fraction of a second of each other, so a slower spell of the machine divides
    out), their median, and their quartiles (how much single rounds scatter)."""
    per_round = sorted(b / a for a, b in zip(ours, peer, strict=True))
    q = statistics.quantiles(per_round, n=4)
    return {"ratio": statistics.median(per_round), "quartiles": (q[0], q[2])}


def patch_vs_vivit(model=None, batch: int = 64, rounds: int = 150) -> dict:
    """Training steps of our spatial branch, ViViT's (`ViViTBranch`: behind the same stem, at the
    same D, depth, heads, MLP width, patch and tubelet) and a second copy of ours (the control: ours
    vs ours shows what this machine's noise alone makes of the ratio), one step each in turn,
    `rounds` times, on the default task's frames (8 of 32x32, 1 channel). `model`: params.yaml's
    model section (its patch settings; `spatial_encoder` is taken as patches)."""
    from vivit_branch import ViViTBranch

    from stfn.config import Paths, load_params
    from stfn.models import STFNConfig, build_spatial

    mp = model or load_params(Paths(REPO).params_file).model
    cfg = STFNConfig(
        **{**mp.model_dump(), "spatial_encoder": "patches", "linear_skip": False},
        series_channels=1, frame_channels=1, frame_size=(32, 32), frame_steps=list(range(3, 32, 4)), steps=32,
        n_outputs=10,
    )  # fmt: skip
    x = torch.randn(batch, 8, 1, 32, 32)
    models = {"ours": build_spatial(cfg), "vivit": ViViTBranch(cfg), "control": build_spatial(cfg)}
    times = interleaved_step_times({k: _trainer(m, x) for k, m in models.items()}, rounds)
    vs_vivit, control = paired_ratio(times["ours"], times["vivit"]), paired_ratio(times["ours"], times["control"])
    rate = lambda k: batch / statistics.median(times[k])  # noqa: E731
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "ours": rate("ours"),
        "vivit": rate("vivit"),
        "ratio": vs_vivit["ratio"],
        "quartiles": vs_vivit["quartiles"],
        "control": control["ratio"],
        "control_quartiles": control["quartiles"],
        "rounds": rounds,
        "ours_params": n(models["ours"]),
        "vivit_params": n(models["vivit"]),
        "settings": {k: getattr(mp, k) for k in ("dim", "patch_depth", "heads", "patch", "tubelet", "patch_stem")},
    }


def run(ours_samples: int = 2048, reference_samples: int = 384, rounds: int = 5) -> tuple[dict, str]:
    """At the default size: the default dataset (params.yaml) and model. Ours, the plain loop
    and Lightning each train one epoch over the same first `ours_samples` training rows, in turn
    (A B C, then C B A, ...), `rounds` times; the parquet-per-sample loop `reference_samples`."""
    import dataclasses

    from profile_step import breakdown

    from stfn.config import Paths, load_params
    from stfn.efficiency import flops_per_sample
    from stfn.features import load_features
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.training import fit, model_config

    md = load_params(REPO / "params.yaml").prepare.moving_digits
    root = project("train", md.n_train)
    params, paths = load_params(root / "params.yaml"), Paths(root)
    folder = prepare(params, paths)
    featurize(params, paths)
    fs = load_features(paths.features_dir("moving-digits"))
    idx = fs.index
    part = pd.concat([idx[idx["split"] == "train"].head(ours_samples), idx[idx["split"] == "val"].head(256)])
    sub = dataclasses.replace(fs, index=part)
    tp = params.train.model_copy(update={"epochs": 1, "patience": 1})
    cfg = model_config(fs, params.model)
    data = in_memory(fs, sub.rows("train"))
    ids = list(idx.loc[idx["split"] == "train", "sample_id"][:reference_samples])

    flops = flops_per_sample(cfg)["flops_train_step"]
    peaks: list[float] = []  # the fp32 matmul yardstick, measured right before each round of ours

    def ours() -> float:
        peaks.append(matmul_gflops())
        result = fit(sub, params.model, tp, params.seed, root / "fit", resume=False)
        return result.history[0]["samples_per_s"]

    sides = {
        "ours": ours,
        "plain": lambda: plain_samples_per_s(data, cfg, tp, params.seed),
        "lightning": lambda: lightning_samples_per_s(data, cfg, tp, params.seed),
    }
    rates: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            rates[name].append(sides[name]())
    ref = best_of(lambda: reference_samples_per_s(folder, ids, cfg, params.train.batch_size, params.train.lr), 2)
    best = {k: max(v) for k, v in rates.items()}
    seconds = {k: [1 / r for r in v] for k, v in rates.items()}  # per sample, as paired_ratio takes them
    ratio = {k: paired_ratio(seconds["ours"], seconds[k])["ratio"] for k in ("plain", "lightning")}
    prof = breakdown(fs, params.model, params.train, seed=params.seed)
    # the share of the yardstick, per round (each epoch of ours over the matmul measured just before
    # it: a slower spell of the machine lands on both), and their median
    shares = [flops * r / 1e9 / p for r, p in zip(rates["ours"], peaks, strict=True)]
    share = statistics.median(shares)
    peak = statistics.median(peaks)
    achieved = share * peak
    vit = patch_vs_vivit(params.model)
    out = {
        "train_vs_plain_loop": ratio["plain"],
        "train_vs_lightning": ratio["lightning"],
        "train_vs_parquet_per_sample": best["ours"] / ref,
        "patch_encoder_vs_vivit": vit["ratio"],
        "patch_encoder_vs_vivit_quartiles": list(vit["quartiles"]),
        "patch_encoder_control": vit["control"],
        "gflops_vs_matmul_peak": share,
        "gflops_vs_matmul_peak_rounds": shares,
        "train_samples_per_s": {**best, "parquet_per_sample": ref},
        "train_samples_per_s_rounds": rates,
        "train_step_profile": prof,
        "patch_encoder_samples_per_s": {"ours": vit["ours"], "vivit": vit["vivit"]},
        "patch_encoder_params": {"ours": vit["ours_params"], "vivit": vit["vivit_params"]},
        "gflops": {
            "achieved": achieved,
            "matmul_fp32_peak": peak,
            "matmul_fp32_peak_rounds": peaks,
            "flops_train_step_per_sample": flops,
        },
        "threads": torch.get_num_threads(),
    }
    spread = lambda k: f"{min(rates[k]):.0f}-{max(rates[k]):.0f}"  # noqa: E731
    text = table(
        f"1. Training throughput (default dataset and model, one epoch over {ours_samples} training samples, "
        f"batch {params.train.batch_size}, {torch.get_num_threads()} threads of {cpu()['model']}; {rounds} rounds in "
        "turn, best)",
        [
            (
                "STFN training: ours (fit)",
                f"{best['ours']:.0f} ({spread('ours')})",
                "plain loop, tensors in RAM",
                f"{best['plain']:.0f} ({spread('plain')})",
                f"{ratio['plain']:.2f}x (median of the rounds)",
            ),
            (
                "",
                "",
                "PyTorch Lightning Trainer",
                f"{best['lightning']:.0f} ({spread('lightning')})",
                f"{ratio['lightning']:.2f}x (median of the rounds)",
            ),
            ("", "", "Dataset reading parquet per sample", f"{ref:.0f}", f"{best['ours'] / ref:.2f}x"),
            (
                "spatial branch: SpacetimePatchEmbed",
                f"{vit['ours']:.0f}",
                "vit-pytorch ViViT (fact. self-attn)",
                f"{vit['vivit']:.0f}",
                f"{vit['ratio']:.2f}x (median of {vit['rounds']} rounds; their quartiles "
                f"{vit['quartiles'][0]:.2f}-{vit['quartiles'][1]:.2f})",
            ),
            (
                "control: the same, a 2nd copy",
                "",
                "(in the same rounds)",
                "",
                f"{vit['control']:.2f}x (quartiles "
                f"{vit['control_quartiles'][0]:.2f}-{vit['control_quartiles'][1]:.2f})",
            ),
            (
                "achieved GFLOP/s (train step)",
                f"{achieved:.1f}",
                "fp32 matmul GFLOP/s (1024^2)",
                f"{peak:.1f} ({min(peaks):.0f}-{max(peaks):.0f})",
                f"{share:.3f} (median of the rounds: " + ", ".join(f"{x:.2f}" for x in shares) + ")",
            ),
        ],  # fmt: skip
        ("ours", "samples/s", "peer", "samples/s", "ratio"),
    )
    text += "\n" + table(
        f"   Where a training step's time goes (torch.profiler, {prof['steps']} steps of {prof['batch']}, "
        f"{prof['ms_per_step']:.0f} ms per step under the profiler)",
        [(k, f"{prof['parts_ms'][k]:.1f}", f"{prof['shares'][k]:.1%}") for k in prof["parts_ms"]],
        ("part", "ms per step", "share"),
    )
    return out, text


if __name__ == "__main__":
    print(run()[1])
