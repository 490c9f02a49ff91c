"""KCS op family: eager reference vs torch.compile(reference) vs fastsmall, plus a copy floor.

    python -m pytest bench/bench_kcs.py --benchmark-json=bench/results/kcs.json
    python bench/report.py bench/results/*.json --out bench/RESULTS.md
"""
import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, SIZES, compile_and_time, measure

SK = fs.Skeleton.h36m16()
J, NB, D = SK.num_joints, SK.num_bones, 3
F32 = 4
OPS = ["kcs_forward", "bone_decompose", "kcs_inverse"]


def _impl(op, impl):
    """The op as a function of its input tensor, for one implementation."""
    ops = fs.reference if impl != "fastsmall" else fs.ops
    if op == "kcs_forward":
        return lambda t: ops.kcs_forward(t, SK)
    if op == "bone_decompose":
        return lambda t: ops.bone_decompose(t, SK)
    return lambda t: ops.kcs_inverse(t, SK)


def _bytes(op, mode, batch):
    """Least bytes an implementation must read and write (float32)."""
    poses, bones, lengths = batch * J * D * F32, batch * NB * D * F32, batch * NB * F32
    fwd = {"kcs_forward": poses + bones, "bone_decompose": poses + bones + lengths,
           "kcs_inverse": bones + poses}[op]
    if mode == "forward":
        return fwd
    # backward reads the output gradients (+ x for bone_decompose) and writes the input gradient
    bwd = {"kcs_forward": bones + poses, "bone_decompose": bones + lengths + 2 * poses,
           "kcs_inverse": poses + bones}[op]
    return fwd + bwd


def _case(op, mode, batch, impl):
    gen = torch.Generator(device=DEVICE).manual_seed(batch)
    rows = NB if op == "kcs_inverse" else J
    x = torch.randn(batch, rows, D, device=DEVICE, generator=gen, requires_grad=(mode == "forward+backward"))
    fn = _impl(op, impl)
    if mode == "forward":
        run = lambda: fn(x)  # noqa: E731
    else:
        with torch.no_grad():
            outs = fn(x)
        outs = outs if isinstance(outs, tuple) else (outs,)
        cot = [torch.randn_like(o) for o in outs]

        def run():
            out = fn(x)
            return torch.autograd.grad(out if isinstance(out, tuple) else (out,), x, cot)
    return run


@pytest.mark.parametrize("batch", SIZES)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("impl", ["eager", "compiled", "fastsmall"])
def bench_kcs(benchmark, impl, op, mode, batch):
    run = _case(op, mode, batch, impl)
    compile_s = None
    if impl == "compiled":
        run, compile_s = compile_and_time(run)
    measure(benchmark, run, family="kcs", op=op, mode=mode, batch=batch, impl=impl,
            bytes_moved=_bytes(op, mode, batch), compile_s=compile_s)


@pytest.mark.parametrize("batch", SIZES)
def bench_copy_floor(benchmark, batch):
    """Memory-traffic floor: a plain copy of one batch of poses (read + write)."""
    src = torch.randn(batch, J, D, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="kcs", op="copy", mode="forward", batch=batch,
            impl="copy", bytes_moved=2 * src.numel() * F32)
