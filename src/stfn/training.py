"""Training: device selection, the loop (AdamW, warm-up + cosine schedule, gradient clipping), early stopping on
the validation metric, a checkpoint each epoch (written atomically).

`fit` takes an `on_epoch` callback instead of importing a tracker: the caller decides where the
numbers go (MLflow, a progress bar, nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from stfn import base_forecast, defaults
from stfn.config import ModelParams, Paths, TrainParams
from stfn.features import FeatureSet
from stfn.fileio import atomic_path
from stfn.inference import load_checkpoint, predict_arrays  # noqa: F401 (re-exported: models that carry no code of their own import them from here)
from stfn.models import STFNConfig, build_model

log = logging.getLogger(__name__)

EpochFn = Callable[[dict[str, float]], None]
BatchFn = Callable[[int, int], None]


EXPERIMENTAL_PATCHES = (
    "model.spatial_encoder=patches is experimental: on moving-digits it trails the CNN (test accuracy "
    "0.946 against 0.962 with 1-frame tubelets at 1.55x the training time, 0.825 with 2-frame ones; "
    "docs, 'The model')"
)


def select_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def model_config(fs: FeatureSet, mp: ModelParams, base: base_forecast.Base | None = None) -> STFNConfig:
    """The model's full config: params.yaml's `model` section (what is still `auto` resolved for
    this feature set), the dataset's shapes, and the simple forecast it starts from (`base`)."""
    spec = fs.spec
    calendar = mp.calendar
    if calendar == defaults.AUTO:
        stamps = fs.index.loc[fs.index["split"] == "train", "timestamp"] if fs.calendar is not None else None
        calendar = defaults.calendar_for(stamps)[0]
    if fs.calendar is None and calendar:
        raise ValueError(f"model.calendar is {calendar}, but the samples of {spec.name} have no timestamp column")
    resolved = {
        "linear_skip": defaults.value("model.linear_skip", mp.linear_skip, spec.task),
        "calendar": calendar,
        "base_terms": base.terms if base is not None else [],
        "persistence_channel": base_forecast.persistence_channel(fs),
    }
    return STFNConfig(
        **{**mp.model_dump(), **resolved},
        series_channels=len(spec.series.channels),
        frame_channels=spec.frames.channels,
        frame_size=(spec.frames.height, spec.frames.width),
        frame_steps=list(spec.frames.steps),
        steps=spec.series.steps,
        n_outputs=spec.n_classes if spec.task == "classification" else 1,
        task=spec.task,
    )


def batches(
    fs: FeatureSet, rows: np.ndarray, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield (series, frames, labels, calendar coordinates or None) numpy batches gathered from
    the memory maps."""
    order = rng.permutation(rows) if shuffle and rng is not None else rows
    for i in range(0, len(order), batch_size):
        idx = np.sort(order[i : i + batch_size])  # sorted reads are sequential on the memmap
        time = fs.calendar[idx] if fs.calendar is not None else None
        yield np.asarray(fs.series[idx]), np.asarray(fs.frames[idx]), fs.labels[idx], time


def warmup_cosine(total_steps: int, warmup_fraction: float, floor: float = 0.01) -> Callable[[int], float]:
    """One-cycle style LR factor: linear warm-up, then cosine decay to `floor` (any step count)."""
    warm = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def loss_fn(task: str, output: torch.Tensor, target: torch.Tensor, regression_loss: str = "mse") -> torch.Tensor:
    """Cross-entropy for classification; for regression (standardised target) MSE, L1 (the
    median: what MAE rewards) or Huber (MSE within one standard deviation, L1 beyond)."""
    if task == "classification":
        return F.cross_entropy(output, target)
    pred = output.squeeze(-1)
    if regression_loss == "l1":
        return F.l1_loss(pred, target)
    if regression_loss == "huber":
        return F.huber_loss(pred, target, delta=1.0)
    return F.mse_loss(pred, target)


def to_device(a: np.ndarray, device: torch.device, pin: bool = False) -> torch.Tensor:
    """A host batch onto the device; pinned and copied without blocking when `pin` (CUDA)."""
    t = torch.as_tensor(a)
    if pin:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def score(task: str, output: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The quick validation numbers used for early stopping."""
    if task == "classification":
        return {"accuracy": float((output.argmax(-1) == labels).mean())}
    err = output.squeeze(-1) - labels
    return {"mae_std": float(np.abs(err).mean())}  # in standardised target units


@dataclass
class FitResult:
    model: nn.Module
    config: STFNConfig
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.nan
    seconds: float = 0.0
    device: str = "cpu"
    resumed_from_epoch: int = 0  # > 0: this run continued a checkpoint of an interrupted one
    resumed_meta: dict[str, Any] = field(default_factory=dict)  # the `meta` the interrupted run saved
    gpu_path: dict[str, bool] = field(default_factory=dict)
    world_size: int = 1
    base: dict[str, Any] = field(default_factory=dict)  # regression: the simple forecast it starts from


def save_checkpoint(path: Path, model: nn.Module, extra: dict[str, Any]) -> None:
    """Atomically write {config, state_dict, ...}; loadable with `weights_only=True`."""
    payload = {"config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# training settings that change no number: a run differing only in these resumes the same training
_NOT_IN_RUN_KEY = {"device", "num_threads", "work_pool", "work_pool_type", "pin_memory", "compile"}


def switch(value: str, device: torch.device) -> bool:
    """A GPU-path setting: "on", "off", or "auto" = on when training on CUDA."""
    return value == "on" or (value == "auto" and device.type == "cuda")


# submodules worth compiling: everything but the temporal encoder (torch.compile of a module
# holding nn.LSTM silently compiles nothing)
COMPILED = ("spatial", "align", "value_norm", "frame_bias", "pool", "head")


def gpu_path(model: nn.Module, tp: TrainParams, device: torch.device) -> dict[str, bool]:
    """Apply TF32 and torch.compile as `tp` says; return every switch as used."""
    used = {k: switch(getattr(tp, k), device) for k in ("amp_bf16", "tf32", "fused_adamw", "pin_memory", "compile")}
    used["pin_memory"] = used["pin_memory"] and device.type == "cuda"  # pinning only helps host -> GPU copies
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = used["tf32"]
        torch.backends.cudnn.allow_tf32 = used["tf32"]
    if used["compile"]:
        for name in COMPILED:
            sub = getattr(model, name, None)
            if sub is not None:
                sub.compile()  # in place: the state_dict keys stay those of the plain model
    return used


def in_group() -> bool:

    return dist.is_available() and dist.is_initialized()


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process in a torch.distributed group, (0, 1) without one."""

    if in_group():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run_key(cfg: STFNConfig, tp: TrainParams, seed: int, fs: FeatureSet) -> str:
    """The identity of one training run: model, training settings, seed and the features' content.
    A checkpoint is resumed only by a run with the same key."""
    train = {k: v for k, v in tp.model_dump(mode="json").items() if k not in _NOT_IN_RUN_KEY}
    features = {k: fs.meta.get(k) for k in ("dataset", "split_method", "counts", "stats")}
    blob = json.dumps(
        {"model": cfg.to_dict(), "train": train, "seed": seed, "features": features}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rng_states() -> dict[str, Any]:
    """Every random state the loop draws from (saved in the checkpoint, so a resumed run continues
    the same random sequence: batch order, dropout)."""
    kind, keys, *rest = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), *rest],  # plain lists: loadable with weights_only=True
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable(path: Path, key: str) -> dict[str, Any] | None:
    """The state of an interrupted run with this key in `path` (Paths.RESUME), else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable: start over (it is rewritten atomically)
        log.warning("ignoring checkpoint %s: %s", path, exc)
        return None
    if state.get("run_key") != key or state.get("finished", True) or "loop" not in state:
        return None
    return state


def _train_epoch(
    net: nn.Module,
    model: nn.Module,
    epoch_batches: Iterator[tuple[np.ndarray, ...]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    task: str,
    tp: TrainParams,
    device: torch.device,
    used: dict[str, bool],
    autocast: Callable[[], Any],
    on_batch: BatchFn | None,
    steps: int,
) -> tuple[float, int]:
    """One pass over the training batches: (sum of the loss over samples, samples seen);
    `on_batch(done, steps)` after each."""
    total, count = 0.0, 0
    for b, (s, f, y, t) in enumerate(epoch_batches):
        s_t, f_t, y_t = (to_device(a, device, used["pin_memory"]) for a in (s, f, y))
        t_t = to_device(t, device, used["pin_memory"]) if t is not None else None
        with autocast():
            output = net(s_t, f_t, t_t)["output"]
        loss = loss_fn(task, output.float(), y_t, tp.regression_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tp.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        if on_batch:
            on_batch(b + 1, steps)
    return total, count


def _validate(
    model: nn.Module, fs: FeatureSet, rows: np.ndarray, task: str, regression_loss: str, device: torch.device
) -> tuple[float, dict[str, float]]:
    """The validation loss and the early-stopping score on `rows`."""
    time = fs.calendar[rows] if fs.calendar is not None else None
    out, _ = predict_arrays(model, fs.series[rows], fs.frames[rows], device=device, time=time)
    val_loss = float(loss_fn(task, torch.as_tensor(out), torch.as_tensor(fs.labels[rows]), regression_loss))
    return val_loss, score(task, out, fs.labels[rows])


def fit(
    fs: FeatureSet,
    mp: ModelParams,
    tp: TrainParams,
    seed: int,
    out_dir: Path,
    on_epoch: EpochFn | None = None,
    on_batch: BatchFn | None = None,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train on the train split, early-stop on val, keep the best weights in `out_dir/model.pt`.

    Each epoch ends with `out_dir/last.pt` written atomically: weights, optimizer, scheduler,
    every RNG state, epoch, best metric, early-stopping count and history, under the run's key
    (`run_key`). A later call with the same key (`resume=True`) continues from it instead of
    starting over, so a killed run resumed ends with the weights an uninterrupted one would have.
    `meta` (e.g. the tracking run's id) is saved in last.pt and handed back on resume, so the
    caller can link the interrupted attempt with the one that carried on."""
    t0 = time.perf_counter()
    if tp.num_threads:
        torch.set_num_threads(tp.num_threads)
    device = select_device(tp.device)
    seed_everything(seed)
    train_rows, val_rows = fs.rows("train"), fs.rows("val")
    base = None
    skip = defaults.value("model.linear_skip", mp.linear_skip, fs.spec.task)
    if fs.spec.task == "regression" and mp.variant == "stfn" and skip:
        base = base_forecast.choose(fs, train_rows, val_rows)  # fitted on train, chosen on val
    cfg = model_config(fs, mp, base)
    model = build_model(cfg, seed).to(device)
    task = cfg.task
    tp = defaults.train_budget(tp, len(train_rows))  # `auto` epochs and patience, for this many samples
    if base is not None:
        base_forecast.apply(model, base)
        log.info("the model starts from the %s forecast (validation MAE %s), frozen", base.name, base.scores)
    rank, world = distributed()
    if world > 1 and device.type == "cuda":  # one GPU per process (torchrun's LOCAL_RANK)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        model = model.to(device)
    if tp.batch_size % world:
        raise ValueError(f"train.batch_size {tp.batch_size} must be divisible by the {world} DDP processes")
    local_batch = tp.batch_size // world  # each process takes its share of every global batch
    steps_per_epoch = math.ceil(math.ceil(len(train_rows) / world) / local_batch)
    used = gpu_path(model, tp, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable, lr=tp.lr, weight_decay=tp.weight_decay, fused=True if used["fused_adamw"] else None
    )
    net = model
    ddp = in_group()  # under torchrun, even with one process: the same sampler, the same batches
    if ddp:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def autocast():
        if used["amp_bf16"]:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    log.info(
        "training on %s%s; %s",
        device,
        f" (rank {rank} of {world})" if world > 1 else "",
        ", ".join(f"{k}={'on' if v else 'off'}" for k, v in used.items()),
    )
    if mp.spatial_encoder == "patches" and mp.variant != "time_only":
        log.warning(EXPERIMENTAL_PATCHES)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(tp.epochs * steps_per_epoch, tp.warmup_fraction))
    rng = np.random.default_rng(seed)
    higher_is_better = task == "classification"
    best = -math.inf if higher_is_better else math.inf
    result = FitResult(model=model, config=cfg, device=str(device))
    result.gpu_path = used
    result.base = base.record() if base is not None else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = 0
    key = run_key(cfg, tp, seed, fs)
    start = 1
    state = resumable(out_dir / Paths.RESUME, key) if resume else None
    if state is not None:  # an interrupted run of this same configuration: continue it
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        loop = state["loop"]
        rng.bit_generator.state = loop["batch_rng"]
        set_rng_states(loop["rng"])
        best, result.best_epoch, stale = loop["best"], loop["best_epoch"], loop["stale"]
        result.history = list(loop["history"])
        start = result.resumed_from_epoch = int(state["epoch"]) + 1
        result.resumed_meta = dict(state.get("meta") or {})
        log.info("resuming run %s from the checkpoint of epoch %d in %s", key, state["epoch"], out_dir / Paths.RESUME)
        if on_epoch and rank == 0:
            for row in result.history:  # the new tracking run gets the whole curve
                on_epoch(row)
    if state is None and getattr(model, "skip", None) is not None and task == "regression":
        # the linear start (the ridge forecast) is epoch 0: an epoch is kept only when it beats it
        _, val0 = _validate(model, fs, val_rows, task, tp.regression_loss, device)
        best, result.best_epoch = next(iter(val0.values())), 0
        if rank == 0:
            save_checkpoint(out_dir / Paths.CHECKPOINT, model, {"epoch": 0, **{f"val_{k}": v for k, v in val0.items()}})
        log.info("the linear start scores val %s on validation; epochs must beat it", best)
    finished = False
    for epoch in range(start, tp.epochs + 1):
        model.train()
        te = time.perf_counter()
        if ddp:  # DistributedSampler: the same shuffled order on every rank, one share each
            sampler = DistributedSampler(range(len(train_rows)), world, rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            epoch_batches = batches(fs, train_rows[list(sampler)], local_batch)
        else:
            epoch_batches = batches(fs, train_rows, tp.batch_size, shuffle=True, rng=rng)
        total, count = _train_epoch(
            net, model, epoch_batches, opt, sched, task, tp, device, used, autocast, on_batch, steps_per_epoch
        )
        train_seconds = time.perf_counter() - te
        if ddp:  # the global mean loss and sample count over every rank
            sums = torch.tensor([total, float(count)], dtype=torch.float64)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        val_loss, val = _validate(model, fs, val_rows, task, tp.regression_loss, device)
        vkey = next(iter(val))
        row = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in val.items()},
            "lr": sched.get_last_lr()[0],
            "samples_per_s": count / max(train_seconds, 1e-9),
        }
        result.history.append(row)
        improved = val[vkey] > best if higher_is_better else val[vkey] < best
        if improved:
            best, result.best_epoch, stale = val[vkey], epoch, 0
            if rank == 0:
                save_checkpoint(out_dir / Paths.CHECKPOINT, model, {"epoch": epoch, f"val_{vkey}": val[vkey]})
        else:
            stale += 1
        finished = stale >= tp.patience or epoch == tp.epochs
        loop = {
            "best": best,
            "best_epoch": result.best_epoch,
            "stale": stale,
            "history": result.history,
            "batch_rng": rng.bit_generator.state,
            "rng": rng_states(),
        }
        if rank == 0:
            save_checkpoint(
                out_dir / Paths.RESUME,
                model,
                {
                    "epoch": epoch,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "run_key": key,
                    "finished": finished,
                    "loop": loop,
                    "meta": dict(meta or {}),
                },
            )
        if ddp:
            dist.barrier()  # rank 0's checkpoint is complete before any rank goes on
        log.info("epoch %d/%d train_loss=%.4f val_%s=%.4f", epoch, tp.epochs, row["train_loss"], vkey, val[vkey])
        if on_epoch and rank == 0:
            on_epoch(row)
        if stale >= tp.patience:
            log.info("early stopping at epoch %d (best %d)", epoch, result.best_epoch)
            break
    best_model, _ = load_checkpoint(out_dir / Paths.CHECKPOINT, device)
    result.model, result.best_val, result.world_size = best_model, best, world
    result.seconds = time.perf_counter() - t0
    return result


def launch_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """The torchrun command line that runs `python -m MODULE ARGS` in `nproc` processes on this
    host (see stfn.stages.train for the several-host form)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args]
