"""The GPU path, on a CUDA device (skipped without one; `benchmarks/gpu_check.sh` runs these there):
bf16 autocast, TF32, fused AdamW, pinned memory with non-blocking copies, torch.compile, and the
NCCL code path through torchrun with one process. Each switch is checked for what it does, and a
model trained with all of them on learns as far as the same model trained in fp32 on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"),
]
CUDA = torch.device("cuda")
SRC = Path(__file__).resolve().parents[2] / "src"


# a small moving-digits that the model learns in a few epochs (tests/integration/teamlib.py's)
DIGITS = dict(n_train=1600, n_val=160, n_test=200, digits_per_video=1, frames=4, steps=16, seed=11)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    from stfn.config import MovingDigitsParams
    from stfn.data.contract import write_dataset
    from stfn.data.moving_digits import make_moving_digits
    from stfn.features import build_features

    root = tmp_path_factory.mktemp("gpu")
    folder = write_dataset(root / "moving-digits", *make_moving_digits(MovingDigitsParams(**DIGITS)))
    return build_features(folder, root / "features", 0.2, 0.2, 3)


def _params(**train):
    from stfn.config import ModelParams, TrainParams

    tp = TrainParams(**{"epochs": 6, "batch_size": 32, "patience": 6, **train})
    return ModelParams(dim=32, attention_hidden=32), tp


def test_every_switch_is_on_with_cuda_and_the_model_learns_as_in_fp32_on_the_cpu(features, tmp_path):
    """The same data, model and settings in fp32 on this project's CPU machine: val accuracy
    0.338, 0.719, 0.869, 0.900, 0.925, 0.956 over the 6 epochs (chance 0.1)."""
    from stfn.features import load_features
    from stfn.training import fit

    mp, tp = _params(device="cuda")
    gpu = fit(load_features(features), mp, tp, 0, tmp_path / "gpu", resume=False)
    assert gpu.device.startswith("cuda")
    assert gpu.gpu_path == {"amp_bf16": True, "tf32": True, "fused_adamw": True, "pin_memory": True, "compile": True}
    best = max(row["val_accuracy"] for row in gpu.history)
    print(f"val accuracy with the GPU path: {best:.3f} (fp32 on the CPU: 0.956)")
    assert best >= 0.9


def test_bf16_autocast_and_tf32_are_what_the_step_runs_with():
    from stfn.config import TrainParams
    from stfn.models import build_model
    from stfn.training import gpu_path

    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model(_config(), seed=0).to(CUDA)
    used = gpu_path(model, TrainParams(device="cuda", compile="off"), CUDA)
    assert used["tf32"] and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(*_inputs())
    assert seen == [torch.bfloat16]


def test_fused_adamw_steps_as_the_plain_one():
    torch.manual_seed(0)
    a = torch.nn.Linear(64, 64).to(CUDA)
    b = torch.nn.Linear(64, 64).to(CUDA)
    b.load_state_dict(a.state_dict())
    opts = [torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True), torch.optim.AdamW(b.parameters(), lr=1e-2)]
    x = torch.randn(32, 64, device=CUDA)
    for _ in range(5):
        for model, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)


def test_pinned_batches_are_copied_without_blocking_and_arrive_whole():
    from stfn.training import to_device

    host = np.random.default_rng(0).normal(size=(64, 8, 1, 32, 32)).astype(np.float32)
    t = to_device(host, CUDA, pin=True)
    torch.cuda.synchronize()
    assert t.device.type == "cuda"
    np.testing.assert_array_equal(t.cpu().numpy(), host)
    assert torch.as_tensor(host).pin_memory().is_pinned()


def test_compiled_submodules_compute_what_the_eager_ones_do():
    from stfn.config import TrainParams
    from stfn.models import build_model
    from stfn.training import COMPILED, gpu_path

    eager = build_model(_config(), seed=0).to(CUDA).eval()
    compiled = build_model(_config(), seed=0).to(CUDA).eval()
    used = gpu_path(compiled, TrainParams(device="cuda", amp_bf16="off", tf32="off"), CUDA)
    assert used["compile"]
    assert all(getattr(compiled, n)._compiled_call_impl is not None for n in COMPILED if getattr(compiled, n, None))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # compiled in place: same keys
    with torch.no_grad():
        s, f = _inputs()
        torch.testing.assert_close(compiled(s, f)["output"], eager(s, f)["output"], rtol=1e-4, atol=1e-4)


RANK = """
import json, sys
import torch.distributed as dist
from pathlib import Path
from stfn.config import ModelParams, TrainParams
from stfn.features import load_features
from stfn.training import fit
dist.init_process_group("nccl")
out = Path(sys.argv[2])
r = fit(load_features(Path(sys.argv[1])), ModelParams(dim=32, attention_hidden=32),
        TrainParams(epochs=2, batch_size=64, device="cuda"), 0, out, resume=False)
(out / "result.json").write_text(json.dumps({"backend": dist.get_backend(), "world": r.world_size,
                                            "device": r.device, "loss": r.history[-1]["train_loss"]}))
dist.destroy_process_group()
"""


def test_nccl_through_torchrun_with_one_process(features, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script),
           str(features), str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["backend"] == "nccl" and result["world"] == 1 and result["device"].startswith("cuda")
    assert np.isfinite(result["loss"])


def _config():
    from stfn.models import STFNConfig

    return STFNConfig(series_channels=4, frame_channels=1, frame_size=(32, 32), frame_steps=[3, 7, 11, 15],
                      steps=16, n_outputs=10, dim=32, attention_hidden=32)  # fmt: skip


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, 4, generator=g).to(CUDA), torch.randn(8, 4, 1, 32, 32, generator=g).to(CUDA)
