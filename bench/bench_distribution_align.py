"""Distribution-alignment family: eager reference vs torch.compile(reference) vs fastsmall, plus a copy floor.

    python -m pytest bench/bench_distribution_align.py --benchmark-json=bench/results/distribution_align.json
    python bench/report.py bench/results/*.json --out bench/RESULTS.md

Cases (float32): distribution_align forward (aligned probabilities written, as FixMatch/CReST+ use
them) and masked_cross_entropy forward and forward+backward, at B = 1,024 and B = 2^20 with C = 10
classes (CIFAR-10-LT), and at B = 1,024 with C = 1,000 (ImageNet). C is part of the op name, since
the report keys cases by (op, mode, B). The copy floor copies the logits of the largest case per B
([1024, 1000] and [2^20, 10] floats). Masks are Bernoulli(0.75), a late-training FixMatch rate.
"""
import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, compile_and_time, measure

F32, I64, BOOL = 4, 8, 1
# (op, B, C): B = 2^20 with a modest C, and C = 1,000 at B = 1,024
CASES = [(1024, 10), (2 ** 20, 10), (1024, 1000)]
TEMPERATURE, THRESHOLD = 0.5, 0.95


def _inputs(B, C):
    gen = torch.Generator(device=DEVICE).manual_seed(B * 7 + C)
    logits = torch.randn(B, C, device=DEVICE, generator=gen) * 3
    prior = torch.rand(C, device=DEVICE, generator=gen) + 0.05
    running = torch.softmax(torch.randn(C, device=DEVICE, generator=gen), 0)
    target = torch.randint(0, C, (B,), device=DEVICE, generator=gen)
    mask = torch.rand(B, device=DEVICE, generator=gen) < 0.75
    return logits, prior, running, target, mask


def _bytes(op, mode, B, C):
    """Least bytes an implementation must read and write."""
    logits, rows = B * C * F32, B * (I64 + BOOL)
    if op == "distribution_align":  # logits -> probs, labels, mask (+ prior, running, batch mean)
        return 2 * logits + rows + 3 * C * F32
    fwd = logits + rows  # logits, target, mask -> a scalar
    return fwd if mode == "forward" else 2 * fwd + logits  # backward re-reads them and writes grad_logits


def _case(op, mode, B, C, impl):
    logits, prior, running, target, mask = _inputs(B, C)
    ops = fs.ops if impl == "fastsmall" else fs.reference
    if op == "distribution_align":
        return lambda: ops.distribution_align(logits, prior, running, TEMPERATURE, THRESHOLD)
    if mode == "forward":
        return lambda: ops.masked_cross_entropy(logits, target, mask)
    x = logits.clone().requires_grad_()

    def run():
        return torch.autograd.grad(ops.masked_cross_entropy(x, target, mask), x)
    return run


@pytest.mark.parametrize("B, C", CASES, ids=[f"B{b}-C{c}" for b, c in CASES])
@pytest.mark.parametrize("op, mode", [("distribution_align", "forward"), ("masked_cross_entropy", "forward"),
                                      ("masked_cross_entropy", "forward+backward")])
@pytest.mark.parametrize("impl", ["eager", "compiled", "fastsmall"])
def bench_distribution_align(benchmark, impl, op, mode, B, C):
    run = _case(op, mode, B, C, impl)
    compile_s = None
    if impl == "compiled":
        run, compile_s = compile_and_time(run)
    measure(benchmark, run, family="distribution_align", op=f"{op} C={C}", mode=mode, batch=B, impl=impl,
            bytes_moved=_bytes(op, mode, B, C), compile_s=compile_s)


@pytest.mark.parametrize("B, C", [(1024, 1000), (2 ** 20, 10)], ids=["B1024", "B1048576"])
def bench_copy_floor(benchmark, B, C):
    """Memory-traffic floor: a plain copy of one batch of logits (read + write)."""
    src = torch.randn(B, C, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="distribution_align", op="copy", mode="forward", batch=B,
            impl="copy", bytes_moved=2 * src.numel() * F32)
