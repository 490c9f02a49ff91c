"""Part-aware KCS Gram: eager reference vs torch.compile(reference) vs fastsmall.

    python -m pytest bench/bench_part_kcs_gram.py --benchmark-json=bench/results/part_kcs_gram.json

Bulk cases use B = 2^18, not 2^20: the references (eager and compiled) materialise the
full masked Gram [B, 5, 15, 15] -- 4.7 GB at 2^20, several times that with its backward --
which does not fit this 24 GB machine next to the benchmark's no-trim allocator (2^20 was
OOM-killed). The masked layout writes 1,125 values per pose (1.2 GB at 2^18).
"""
import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, compile_and_time, measure

SK = fs.Skeleton.h36m16()
NB, D, F32 = SK.num_bones, 3, 4
SIZES = {"masked": [1024, 2 ** 18], "compact": [1024, 2 ** 18]}
CASES = [(layout, batch) for layout, sizes in SIZES.items() for batch in sizes]


def _bytes(layout, mode, batch):
    out = batch * (len(SK.parts) * NB * NB if layout == "masked" else sum(len(p) ** 2 for p in SK.part_bones)) * F32
    unit = batch * NB * D * F32
    fwd = unit + out
    return fwd if mode == "forward" else fwd + out + 2 * unit  # backward reads grad + unit, writes grad_unit


def _case(layout, mode, batch, impl):
    """The case as a zero-argument callable (also used by floor_ratio.py)."""
    ops = fs.ops if impl == "fastsmall" else fs.reference
    gen = torch.Generator(device=DEVICE).manual_seed(batch)
    unit = torch.randn(batch, NB, D, device=DEVICE, generator=gen, requires_grad=(mode != "forward"))
    fn = lambda: ops.part_kcs_gram(unit, SK, layout)  # noqa: E731
    if mode != "forward":
        with torch.no_grad():
            cot = torch.randn_like(fn())
        forward = fn
        fn = lambda: torch.autograd.grad(forward(), unit, cot)  # noqa: E731
    return fn


@pytest.mark.parametrize("layout, batch", CASES)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["eager", "compiled", "fastsmall"])
def bench_part_kcs_gram(benchmark, impl, mode, layout, batch):
    fn = _case(layout, mode, batch, impl)
    compile_s = None
    if impl == "compiled":
        fn, compile_s = compile_and_time(fn)
    measure(benchmark, fn, family="part_kcs_gram", op=f"part_kcs_gram[{layout}]", mode=mode, batch=batch,
            impl=impl, bytes_moved=_bytes(layout, mode, batch), compile_s=compile_s)


@pytest.mark.parametrize("batch", [1024, 2 ** 18])
def bench_copy_floor(benchmark, batch):
    """Memory-traffic floor at this batch size: a plain copy of 5 x NB x NB floats per pose."""
    src = torch.randn(batch, 5 * NB * NB, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="part_kcs_gram", op="copy", mode="forward", batch=batch,
            impl="copy", bytes_moved=2 * src.numel() * F32)
