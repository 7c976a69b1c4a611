"""Data-parallel training with torch DDP, one process per CPU share or GPU, launched by torchrun.

`train.nproc: N` in params.yaml makes the train stage run

    torchrun --standalone --nproc_per_node N -m stfn.ddp --root PROJECT --params RESOLVED.json

Each process joins the group (gloo on the CPU, NCCL on GPUs), trains on its share of every global
batch (`DistributedSampler` with `set_epoch`, the same global batch as one process would see), and
rank 0 alone writes checkpoints and the training summary. Several hosts: the same command on each,
with `--nnodes M --node_rank K --rdzv_backend c10d --rdzv_endpoint HOST:PORT` instead of
`--standalone` (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import torch
    import torch.distributed as dist

    from stfn import stages
    from stfn.config import Params, Paths, load_params

    ap = argparse.ArgumentParser(prog="python -m stfn.ddp")
    ap.add_argument("--root", required=True)
    ap.add_argument("--params", help="the resolved parameters (JSON); default: ROOT/params.yaml")
    ap.add_argument("--summary", help="where rank 0 writes the training summary (JSON)")
    args = ap.parse_args(argv)
    paths = Paths(Path(args.root))
    if args.params:
        params = Params.model_validate(json.loads(Path(args.params).read_text()))
    else:
        params = load_params(paths.root / "params.yaml")
    cuda = params.train.device != "cpu" and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        summary = stages.train(params, paths, distributed=True)
        if dist.get_rank() == 0 and args.summary:
            Path(args.summary).write_text(json.dumps(summary, default=str))
    finally:
        dist.destroy_process_group()


def launch_command(nproc: int, root: Path, params_json: Path, summary: Path) -> list[str]:
    """The torchrun command line the train stage runs for `train.nproc` > 1 (one host)."""
    import sys

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "stfn.ddp", "--root", str(root),
            "--params", str(params_json), "--summary", str(summary)]  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
