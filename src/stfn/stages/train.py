"""Stage `train`: the STFN on the features -> models/<name>/model.pt (best epoch), last.pt
(resumable state), history.json (the summary and per-epoch curves). DVC: `python -m stfn.stages.train`.

With `train.nproc: N` > 1 it launches torchrun, which runs this module in N processes:

    torchrun --standalone --nproc_per_node N -m stfn.stages.train --ddp --root PROJECT --params RESOLVED.json

Each process joins the group (gloo on the CPU, NCCL on GPUs), trains on its share of every global
batch, and rank 0 alone writes checkpoints and the summary. Several hosts: the same command on
each, with `--nnodes M --node_rank K --rdzv_backend c10d --rdzv_endpoint HOST:PORT` instead of
`--standalone` (docs, "Performance").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from stfn import defaults, progress
from stfn.config import Params, Paths, load_params
from stfn.efficiency import flops_per_sample, peak_memory_mb
from stfn.features import load_features
from stfn.fileio import write_json
from stfn.runtime import stage_context
from stfn.training import distributed, fit, launch_command

log = logging.getLogger(__name__)


def train(
    params: Params,
    paths: Paths,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    in_group: bool = False,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train STFN on the features; returns the training summary (also written to history.json).
    With `train.nproc` > 1 (and not already inside a torchrun group) it launches torchrun with
    that many DDP processes and reads their summary back (the epochs replayed to `on_epoch`).
    `meta` is saved with the resumable state (e.g. the MLflow run id) and, when this call resumed
    an interrupted run, what that run saved comes back as `resumed_meta`. `auto` settings are
    resolved for the dataset's task (stfn.defaults)."""
    params, _ = defaults.for_dataset(params, paths)
    if params.train.nproc > 1 and not in_group:
        return _train_ddp(params, paths, on_epoch)
    name = paths.dataset_name(params.data.dataset)
    fs = load_features(paths.features_dir(name))
    out = paths.model_dir(name)
    epochs, steps = params.train.epochs, math.ceil(len(fs.rows("train")) / params.train.batch_size)
    with progress.bar("training", epochs * steps) as update:
        seen: dict[str, Any] = {"epoch": 0, "metrics": ""}

        def batch_done(b: int, n: int) -> None:
            update(seen["epoch"] * n + b, info=f"epoch {seen['epoch'] + 1}/{epochs} {seen['metrics']}")
            if on_batch:
                on_batch(b, n)

        def epoch_done(row: dict[str, float]) -> None:
            seen["epoch"] = int(row["epoch"])
            shown = [k for k in row if k == "train_loss" or (k.startswith("val_") and k != "val_loss")]
            seen["metrics"] = " ".join(f"{k}={row[k]:.4f}" for k in shown)
            # drawn at once: a short epoch can end between two ticks of the display (4 a second)
            update(seen["epoch"] * steps, info=f"epoch {seen['epoch']}/{epochs} {seen['metrics']}", refresh=True)
            if on_epoch:
                on_epoch(row)

        result = fit(
            fs, params.model, params.train, params.seed, out, on_epoch=epoch_done, on_batch=batch_done, meta=meta
        )
        update(info=f"{len(result.history)} epochs, best {result.best_epoch}: {seen['metrics']}")
    flops = flops_per_sample(result.config)
    rates = [h["samples_per_s"] for h in result.history]
    summary = {
        "checkpoint": str(paths.checkpoint(name)),
        "best_epoch": result.best_epoch,
        "best_val": result.best_val,
        "epochs_run": len(result.history),
        "resumed_from_epoch": result.resumed_from_epoch,  # > 0: continued an interrupted run's checkpoint
        "resumed_meta": result.resumed_meta,
        "train_seconds": round(result.seconds, 2),
        "device": result.device,
        "history": result.history,
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        "efficiency": {
            "n_parameters": int(flops["n_parameters"]),
            "flops_forward_per_sample": flops["flops_forward"],
            "flops_train_step_per_sample": flops["flops_train_step"],
            "train_samples_per_s": float(np.median(rates)) if rates else 0.0,
            "peak_memory_mb": round(peak_memory_mb(result.device), 1),
        },
        "world_size": result.world_size,
        "gpu_path": result.gpu_path,
        "base": result.base,  # regression: the simple forecast the model starts from, and the candidates' val MAE
    }
    if distributed()[0] == 0:
        write_json(paths.history_file(name), summary)
    return summary


def _train_ddp(params: Params, paths: Paths, on_epoch: Callable[[dict[str, float]], None] | None) -> dict[str, Any]:
    """torchrun with train.nproc processes running this module; a failure shows their log."""
    with tempfile.TemporaryDirectory(prefix="stfn-ddp-") as tmp:
        resolved, summary = Path(tmp) / "params.json", Path(tmp) / "summary.json"
        resolved.write_text(json.dumps(params.model_dump(mode="json")))
        args = ["--ddp", "--root", str(paths.root), "--params", str(resolved), "--summary", str(summary)]
        cmd = launch_command(params.train.nproc, __name__, args)
        log.info("training with %d DDP processes: %s", params.train.nproc, " ".join(cmd))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with progress.bar("training") as update:
            update(info=f"torchrun, {params.train.nproc} processes")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=paths.root)
        if proc.returncode != 0 or not summary.is_file():
            n = params.train.nproc
            raise RuntimeError(f"DDP training (torchrun, {n} processes) failed:\n{proc.stderr[-3000:]}")
        result = json.loads(summary.read_text())
    if on_epoch:
        for row in result["history"]:
            on_epoch(row)
    return result


def ddp_worker(root: str, params_json: str | None, summary_path: str | None) -> None:
    """One torchrun process: join the group, train its share, rank 0 writes the summary."""
    paths = Paths(Path(root))
    if params_json:
        params = Params.model_validate(json.loads(Path(params_json).read_text()))
    else:
        params = load_params(paths.params_file)
    cuda = params.train.device != "cpu" and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        summary = train(params, paths, in_group=True)
        if dist.get_rank() == 0 and summary_path:
            Path(summary_path).write_text(json.dumps(summary, default=str))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m stfn.stages.train")
    ap.add_argument("--ddp", action="store_true", help="one process of a torchrun group")
    ap.add_argument("--root", help="the project folder (default: around the current directory)")
    ap.add_argument("--params", help="the resolved parameters (JSON); default: ROOT/params.yaml")
    ap.add_argument("--summary", help="where rank 0 writes the training summary (JSON)")
    args = ap.parse_args(argv)
    if args.ddp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        ddp_worker(args.root or str(Paths.here().root), args.params, args.summary)
        return
    params, paths = stage_context()
    print(json.dumps({k: v for k, v in train(params, paths).items() if k != "history"}, default=str))


if __name__ == "__main__":
    main()
