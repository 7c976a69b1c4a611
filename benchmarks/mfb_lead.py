"""A lead for the time to a champion, measured and not yet taken: MFB (the default alignment)
computed as one D x D matrix per frame instead of the (B, F, N, D*k) product, with a hand-written
backward. Checks it against `BilinearAlignment` (float64: outputs and every gradient; gradcheck),
then times the default training step with each, in paired alternating steps on the same batch.

    .venv/bin/python benchmarks/mfb_lead.py [--steps 120]

On an Intel host with AMX (fp32 matmul 404-445 GFLOP/s): MFB's forward + backward 10.4 -> 4.7 ms
alone; the whole step 1.05x and 1.06x in two runs (quartiles 1.02-1.08, 1.02-1.10). Why it is not
the default yet: docs, "Performance".
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).parent))

from common import project  # noqa: E402


class MFBProduct(torch.autograd.Function):
    """SumPool_k(U h * (V f + b)) as Z = f W^T + c per frame, W[d] = sum_k (U h)[d, k] V[d, k] (D x D),
    c[d] = sum_k (U h)[d, k] b[d, k]: uh (X, D, k), f (X, N, J), V (D, k, J), b (D, k) -> (X, N, D).
    Hand-written backward: autograd's, of the products batched over d, copies each (X, J) matrix
    out of the strided gradient (2.7x slower than the product it replaces)."""

    @staticmethod
    def forward(ctx, uh: torch.Tensor, f: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        uhd = uh.transpose(0, 1).contiguous()  # (D, X, k): batched over d
        w = torch.bmm(uhd, v.to(uhd.dtype)).transpose(0, 1).contiguous()  # (X, D, J)
        c = (uh * bias.to(uh.dtype)).sum(-1)  # (X, D)
        ctx.save_for_backward(uhd, f, v, bias, w)
        return torch.baddbmm(c[:, None, :].to(f.dtype), f, w.transpose(1, 2).to(f.dtype))

    @staticmethod
    def backward(ctx, gz: torch.Tensor):
        uhd, f, v, bias, w = ctx.saved_tensors
        gz = gz.contiguous()
        gf = torch.bmm(gz, w.to(gz.dtype))  # (X, N, J)
        gwd = torch.bmm(gz.transpose(1, 2), f.to(gz.dtype)).transpose(0, 1).contiguous()  # (D, X, J)
        gc = gz.sum(1).t()  # (D, X)
        guhd = torch.baddbmm(gc[:, :, None] * bias.to(gz.dtype)[:, None, :], gwd, v.to(gz.dtype).transpose(1, 2))
        gv = torch.bmm(uhd.to(gz.dtype).transpose(1, 2), gwd)  # (D, k, J)
        gbias = (uhd.to(gz.dtype) * gc[:, :, None]).sum(1)  # (D, k)
        return guhd.transpose(0, 1).to(uhd.dtype), gf.to(f.dtype), gv.to(v.dtype), gbias.to(bias.dtype)


def matrix_forward(self, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """`BilinearAlignment.forward` through `MFBProduct`: the same parameters and function."""
    k, b = self.factor, f.shape[0]
    z = MFBProduct.apply(
        rearrange(self.u(h), "b f (d k) -> (b f) d k", k=k),
        rearrange(f, "b f n j -> (b f) n j"),
        rearrange(self.v.weight, "(d k) j -> d k j", k=k),
        rearrange(self.v.bias, "(d k) -> d k", k=k),
    )
    return self.norm(rearrange(z, "(b f) n d -> b f n d", b=b))


def check() -> float:
    """The largest difference from `BilinearAlignment` over outputs and gradients (float64)."""
    from stfn.models import BilinearAlignment

    torch.manual_seed(0)
    worst = 0.0
    for b, fr, n, d, k in ((64, 8, 16, 64, 4), (3, 5, 7, 8, 2), (2, 1, 1, 4, 1)):
        m = BilinearAlignment(d, k).double()
        h = torch.randn(b, fr, d, dtype=torch.double, requires_grad=True)
        f = torch.randn(b, fr, n, d, dtype=torch.double, requires_grad=True)
        ref, new = m(h, f), matrix_forward(m, h, f)
        g = torch.randn_like(ref)
        inputs = [h, f, *m.parameters()]
        grads = zip(torch.autograd.grad(ref, inputs, g), torch.autograd.grad(new, inputs, g), strict=True)
        worst = max(worst, (ref - new).abs().max().item(), *((x - y).abs().max().item() for x, y in grads))
    small = [torch.randn(*s, dtype=torch.double, requires_grad=True) for s in ((6, 5, 2), (6, 4, 5), (5, 2, 5), (5, 2))]
    assert torch.autograd.gradcheck(MFBProduct.apply, small)
    return worst


def paired_steps(steps: int) -> dict:
    """The default training step with the model's MFB and with `MFBProduct`, one step each in turn
    on the same batch (bench_train's `interleaved_step_times`), and the ratio of their times
    (`paired_ratio`: model / MFBProduct, above 1 when `MFBProduct` is faster)."""
    from bench_train import interleaved_step_times, paired_ratio

    from stfn.config import Paths, load_params
    from stfn.features import load_features
    from stfn.models import build_model
    from stfn.stages.featurize import featurize
    from stfn.stages.prepare import prepare
    from stfn.training import batches, loss_fn, model_config

    root = project("mfb-lead", 2048)
    params, paths = load_params(root / "params.yaml"), Paths(root)
    prepare(params, paths)
    featurize(params, paths)
    fs = load_features(paths.features_dir("moving-digits"))
    tp, cfg = params.train, model_config(fs, params.model)
    s, f, y = (torch.as_tensor(a) for a in next(batches(fs, fs.rows("train"), tp.batch_size))[:3])

    def trainer(matrix: bool):
        model = build_model(cfg, 0).train()
        if matrix:
            model.align.forward = types.MethodType(matrix_forward, model.align)
        opt = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)

        def step() -> None:
            loss = loss_fn(cfg.task, model(s, f)["output"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            opt.step()

        return step

    times = interleaved_step_times({"matrix": trainer(True), "model": trainer(False)}, steps, warmup=5)
    return paired_ratio(times["matrix"], times["model"])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    print(f"largest difference from BilinearAlignment (float64, outputs and gradients): {check():.1e}")
    r = paired_steps(args.steps)
    q = r["quartiles"]
    print(f"training step, BilinearAlignment / MFBProduct: {r['ratio']:.3f}x (quartiles {q[0]:.3f}-{q[1]:.3f})")
