"""MLP-block tail ``residual + dropout(relu(batch_norm(y)))``, y [B, 1,024] (SimpleBaseline's and
VideoPose3D's width): the official modules (BatchNorm1d -> ReLU -> Dropout, ``bernoulli_`` mask),
torch.compile of them, the plain-PyTorch reference, and fastsmall's one-pass op.

    python -m pytest bench/bench_bn_act_dropout.py --benchmark-json=bench/results/bn_act_dropout.json

All in training mode with p = 0.25 (the released dropout) and a residual, as the second layer of
a residual stage runs. The copy floor moves y's bytes once.
"""
import pytest
import torch
import torch.nn as nn

import fastsmall as fs
from conftest import DEVICE, compile_and_time, measure

C, P, F32 = 1024, 0.25, 4
SIZES = [1024, 16384]


def _bytes(mode, batch):
    n = batch * C * F32
    return 3 * n if mode == "forward" else 3 * n + 4 * n  # fwd: y, residual, out; bwd: grad, y, grad_y (+ residual grad)


def _official(bn, drop):
    return lambda y, r: r + drop(torch.relu(bn(y)))


def _fastsmall(bn, drop):
    return lambda y, r: fs.ops.bn_act_dropout_layer(y, bn, drop, residual=r)


def _reference(bn, drop):
    def fn(y, r):
        seed = fs.ops.bn_act_dropout_seed(y.device)
        return fs.reference.bn_act_dropout(y, bn.weight, bn.bias, None, None, r, seed, bn.eps, 0.0, drop.p)[0]
    return fn


@pytest.mark.parametrize("batch", SIZES)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["eager", "compiled", "reference", "fastsmall"])
def bench_bn_act_dropout(benchmark, impl, mode, batch):
    torch.manual_seed(batch)
    bn, drop = nn.BatchNorm1d(C).to(DEVICE).train(), nn.Dropout(P).train()
    y = torch.randn(batch, C, device=DEVICE, requires_grad=(mode != "forward"))
    r = torch.randn(batch, C, device=DEVICE)
    body = {"eager": _official, "compiled": _official, "reference": _reference, "fastsmall": _fastsmall}[impl](bn, drop)
    if mode == "forward":
        def fn():
            with torch.no_grad():
                return body(y, r)
    else:
        cot = torch.randn(batch, C, device=DEVICE)

        def fn():
            return torch.autograd.grad(body(y, r), y, cot)
    compile_s = None
    if impl == "compiled":
        fn, compile_s = compile_and_time(fn)
    measure(benchmark, fn, family="bn_act_dropout", op="bn_act_dropout", mode=mode, batch=batch, impl=impl,
            bytes_moved=_bytes(mode, batch), compile_s=compile_s)


@pytest.mark.parametrize("batch", SIZES)
def bench_copy_floor(benchmark, batch):
    src = torch.randn(batch, C, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="bn_act_dropout", op="copy", mode="forward", batch=batch,
            impl="copy", bytes_moved=2 * src.numel() * F32)
