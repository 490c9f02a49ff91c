"""Benchmark harness shared by bench/bench_*.py (pytest-benchmark).

Every case records in ``extra_info``: the op, mode, batch size, implementation
(eager reference / torch.compile'd reference / fastsmall / copy floor) and the
bytes it must move at least, so bench/report.py can compute ratios, GB/s and
the memory-traffic floor from a copy measured in the same run.
"""
from __future__ import annotations

import time

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _reuse_freed_memory() -> str:
    """Make glibc keep and reuse freed large blocks, as a caching allocator does.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it on free, so
    each out-of-place op on 2^20 poses pays ~50k page faults for its output -- more
    than the kernel itself, for every implementation alike. PyTorch's CUDA allocator
    caches blocks; on CPU the usual remedy is jemalloc/tcmalloc. Here: no mmap for
    large blocks and no trimming of the heap (mallopt). FASTSMALL_BENCH_MALLOC=default
    keeps glibc's defaults.
    """
    import ctypes
    import os

    if os.environ.get("FASTSMALL_BENCH_MALLOC", "reuse") == "default":
        return "glibc defaults"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "glibc defaults (no libc.so.6)"
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1):
        return "glibc, freed memory reused (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
    return "glibc defaults (mallopt failed)"


ALLOCATOR = _reuse_freed_memory() if DEVICE.type == "cpu" else "CUDA caching allocator"
SIZES = [1024, 2 ** 20]


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def rounds_for(batch: int) -> dict:
    """Enough repetitions for a stable median within a few seconds per case."""
    if batch <= 4096:
        return dict(rounds=60, iterations=10, warmup_rounds=5)
    return dict(rounds=8, iterations=1, warmup_rounds=2)


def measure(benchmark, fn, *, family, op, mode, batch, impl, bytes_moved, compile_s=None, rounds=None):
    """Time ``fn`` (``rounds``: pytest-benchmark pedantic options; default ``rounds_for(batch)``)."""
    def timed():
        fn()
        sync()

    benchmark.group = f"{op} {mode} B={batch}"
    benchmark.extra_info.update(
        family=family, op=op, mode=mode, batch=batch, impl=impl, bytes=bytes_moved,
        device=str(DEVICE), compile_s=compile_s,
    )
    benchmark.pedantic(timed, **(rounds or rounds_for(batch)))


def compile_and_time(fn):
    """torch.compile ``fn`` and time its first (compiling) call separately."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    compiled = torch.compile(fn)
    start = time.perf_counter()
    with inductor_config.patch(fx_graph_cache=False):  # a real compile, not a cache hit
        compiled()
    sync()
    return compiled, time.perf_counter() - start


@pytest.fixture(scope="session")
def device():
    return DEVICE


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the versions and device next to pytest-benchmark's machine info."""
    import fastsmall

    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    output_json["fastsmall"] = {
        "fastsmall": fastsmall.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "allocator": ALLOCATOR,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_isa": _kernel_isa(),
    }


def _kernel_isa() -> str | None:
    """The instruction set fastsmall's C++ kernels chose at load (``python -m fastsmall.info``)."""
    from fastsmall import _extension as ext

    if ext.C is None:
        return None
    build = ext.C.build_info()
    isa, width = build.get("cpu_kernel_isa"), build.get("cpu_kernel_vector_bytes")
    return f"{isa} ({width}-byte vectors)" if isa else None
