"""KE re-initialisation and DSD masking of a ResNet-18-shaped parameter list (float32).

    python -m pytest bench/bench_ke_reinit.py --benchmark-json=bench/results/ke_reinit.json
    python bench/report.py bench/results/*.json --out bench/RESULTS.md

The parameter list is the conv/linear weights of ``fastsmall.methods.models.resnet18``
(1000 classes: 21 tensors, 11.7 M weights; ``batch`` in the results = that weight count).

* ``ke_reinit_`` (op), one case per mask kind (``mode`` = kels / wels at split rate 0.5,
  ``torch_default`` init): ``eager`` = the official KE per-module loop
  (``fastsmall.methods.ke.official.official_ke_reinit_``: a fresh ``kaiming_uniform_`` tensor and
  ``torch.where`` with a stored bool mask per tensor), ``compiled`` = that loop under
  ``torch.compile`` (warm; compile time reported separately), ``fastsmall`` =
  ``fs.ops.ke_reinit_`` with KELS / WELS masks (no mask tensors). Target: >= 5x eager.
* ``masked_mul_`` (mode ``dsd``: stored bool masks of 30 % magnitude pruning): ``eager`` =
  ``W.mul_(mask)`` per tensor (``fastsmall.methods.dsd.official.official_masked_mul_``), ``foreach`` =
  one ``torch._foreach_mul_`` (not a column of bench/report.py's table; in the JSON),
  ``fastsmall`` = ``fs.ops.masked_mul_``.
* ``copy`` floor: one copy of 11.7 M float32 (read + write), for report.py's floor column.

``extra_info["bytes"]`` is the least traffic of the op, counted in 64-byte cache lines (memory
moves whole lines: a store to part of a line reads the line first, and a line holding a kept
weight must be read to keep it): a line whose weights are all re-initialised / pruned is only
written (64 B), a line with both kinds is read and written (128 B), a line of kept weights not
touched. masked_mul_ also reads the masks (1 B per weight; KELS / WELS need no mask read). So
KELS, whose reset weights are whole rows and row tails, is close to "write the reset weights",
while a WELS or magnitude mask at rate 0.5 / 0.3 puts a reset weight in nearly every line and
its floor is a copy of the whole model. (Before 2026-12-07 the bytes were the reset weights
alone, 4 B each, a floor no implementation can reach for scattered masks: 4x too low for WELS.)
``extra_info["allocated_bytes"]`` is what
one call allocates (CPU: torch.profiler's memory events; CUDA: the peak above the start),
to show which implementations allocate memory proportional to the model.
"""
import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, compile_and_time, measure
from fastsmall.methods import dsd, ke
from fastsmall.methods.dsd.official import official_masked_mul_
from fastsmall.methods.ke.official import official_ke_reinit_
from fastsmall.methods.models import resnet18

F32 = 4
SPLIT_RATE = 0.5
SPARSITY = 0.3


def _weights():
    """The conv/linear weights of ResNet-18 (1000 classes) on DEVICE, with their names."""
    torch.manual_seed(0)
    model = resnet18(num_classes=1000).to(DEVICE)
    names = list(ke.split_masks(model, SPLIT_RATE))
    params = dict(model.named_parameters())
    return model, names, [params[n].detach() for n in names]


MODEL, NAMES, WEIGHTS = _weights()
NUMEL = sum(w.numel() for w in WEIGHTS)


def _allocated(fn) -> int:
    """Bytes one call of ``fn`` allocates."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.cpu_memory_usage, 0) for e in prof.events())


LINE = 64  # bytes per cache line


def _line_traffic(ws, keeps) -> int:
    """Least bytes to update the not-kept weights of ``ws`` in place, in whole cache lines."""
    total = 0
    for w, keep in zip(ws, keeps):
        per_line = LINE // w.element_size()
        flat = (~keep).reshape(-1)
        pad = (-flat.numel()) % per_line  # tensors start 64-byte aligned (torch's CPU allocator)
        lines = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per_line)
        reset = lines.sum(1)
        whole = (reset == per_line).sum().item()
        partial = ((reset > 0) & (reset < per_line)).sum().item()
        total += LINE * whole + 2 * LINE * partial
    return total


def _ke_case(mode, impl):
    masks = ke.split_masks(MODEL, SPLIT_RATE, mode=mode, seed=0)
    objs = [masks[n] for n in NAMES]
    ws = [w.clone() for w in WEIGHTS]
    keeps = [fs.reference.ke_keep_mask(w.shape, m, w.device) for w, m in zip(ws, objs)]
    if impl == "fastsmall":
        state = {"generation": 0}

        def run():
            state["generation"] += 1
            fs.ops.ke_reinit_(ws, objs, seed=0, generation=state["generation"])
    else:
        def run():
            official_ke_reinit_(ws, keeps)
    return run, _line_traffic(ws, keeps)


@pytest.mark.parametrize("mode", ["kels", "wels"])
@pytest.mark.parametrize("impl", ["eager", "compiled", "fastsmall"])
def bench_ke_reinit(benchmark, impl, mode):
    run, bytes_moved = _ke_case(mode, impl)
    compile_s = None
    if impl == "compiled":
        run, compile_s = compile_and_time(run)
    run()
    allocated = _allocated(run)
    measure(benchmark, run, family="ke_reinit", op="ke_reinit_", mode=mode, batch=NUMEL, impl=impl,
            bytes_moved=bytes_moved, compile_s=compile_s)
    benchmark.extra_info["allocated_bytes"] = allocated


def _mask_case(impl):
    """DSD's masking step with stored magnitude masks: (run, least bytes)."""
    masks = dsd.magnitude_masks(MODEL, SPARSITY)
    keeps = [masks[n] for n in NAMES]
    ws = [w.clone() for w in WEIGHTS]
    if impl == "fastsmall":
        run = lambda: fs.ops.masked_mul_(ws, keeps)  # noqa: E731
    elif impl == "foreach":
        run = lambda: torch._foreach_mul_(ws, keeps)  # noqa: E731
    else:
        run = lambda: official_masked_mul_(ws, keeps)  # noqa: E731
    return run, NUMEL + _line_traffic(ws, keeps)


@pytest.mark.parametrize("impl", ["eager", "foreach", "fastsmall"])
def bench_masked_mul(benchmark, impl):
    run, bytes_moved = _mask_case(impl)
    run()
    allocated = _allocated(run)
    measure(benchmark, run, family="ke_reinit", op="masked_mul_", mode="dsd", batch=NUMEL, impl=impl,
            bytes_moved=bytes_moved)
    benchmark.extra_info["allocated_bytes"] = allocated


def bench_copy_floor_weights(benchmark):
    """Memory-traffic floor: a plain copy of as many float32 values as the weights (read + write)."""
    src = torch.randn(NUMEL, device=DEVICE)
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), family="ke_reinit", op="copy", mode="forward", batch=NUMEL,
            impl="copy", bytes_moved=2 * NUMEL * F32)
