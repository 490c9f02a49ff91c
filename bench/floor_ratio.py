"""Bulk ops against the copy floor, each call paired with a copy in one process (issue #17's targets).

    python bench/floor_ratio.py [--repeats 15] [--threads 1 2] [--json bench/results/floor_ratio.json]

report.py's `x floor` divides a fastsmall time by a copy timed by pytest-benchmark in a block of
its own, minutes apart; on this shared host a copy's bandwidth moves between 16 and 26 GB/s from
one run to the next, and every ratio with it (the bulk KCS rows moved 1.86 -> 2.21 between two runs
of the same build). Here each bulk case times its fastsmall call and right after it the family's
copy (the same buffers as the bench files' `bench_copy_floor`), `--repeats` times, so both see the
same machine; `x floor` is the median over the pairs of op time / (the case's least bytes at that
pair's copy bandwidth). The cases, their inputs and their byte counts are the bench files' own
(`_case`, `_bytes`, `_line_traffic`), so the two reports count the same thing.

Targets (issue #17): <= 2x the floor at B = 2^20 (part_kcs_gram: 2^18), `ke_reinit_` <= 3x.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_distribution_align as bda  # noqa: E402
import bench_kcs as bkcs  # noqa: E402
import bench_ke_reinit as bke  # noqa: E402
import bench_part_kcs_gram as bpg  # noqa: E402
from conftest import ALLOCATOR, _kernel_isa  # noqa: E402

F32 = 4
BIG, GRAM_BIG = 2 ** 20, 2 ** 18


def cases():
    """(family, op, mode, B, make, target): make() builds the case's inputs and returns (run, least bytes).
    Built one at a time, so only one case's tensors (up to a few GB) are alive at once."""
    out = []
    for op in bkcs.OPS:
        for mode in ("forward", "forward+backward"):
            out.append(("kcs", op, mode, BIG, lambda op=op, mode=mode: (bkcs._case(op, mode, BIG, "fastsmall"),
                                                                       bkcs._bytes(op, mode, BIG)), 2.0))
    for layout in ("compact", "masked"):
        for mode in ("forward", "forward+backward"):
            out.append(("part_kcs_gram", f"part_kcs_gram[{layout}]", mode, GRAM_BIG,
                        lambda layout=layout, mode=mode: (bpg._case(layout, mode, GRAM_BIG, "fastsmall"),
                                                          bpg._bytes(layout, mode, GRAM_BIG)), 2.0))
    for mode in ("kels", "wels"):
        out.append(("ke_reinit", "ke_reinit_", mode, bke.NUMEL, lambda mode=mode: bke._ke_case(mode, "fastsmall"), 3.0))
    out.append(("ke_reinit", "masked_mul_", "dsd", bke.NUMEL, lambda: bke._mask_case("fastsmall"), 2.0))
    for op, mode in (("distribution_align", "forward"), ("masked_cross_entropy", "forward"),
                     ("masked_cross_entropy", "forward+backward")):
        out.append(("distribution_align", f"{op} C=10", mode, BIG,
                    lambda op=op, mode=mode: (bda._case(op, mode, BIG, 10, "fastsmall"), bda._bytes(op, mode, BIG, 10)),
                    2.0))
    return out


# The families' copies: the buffers of the bench files' bench_copy_floor at the bulk size.
COPY_SHAPES = {"kcs": (BIG, bkcs.J, bkcs.D), "part_kcs_gram": (GRAM_BIG, 5 * bpg.NB * bpg.NB),
               "ke_reinit": (bke.NUMEL,), "distribution_align": (BIG, 10)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(case, repeats: int) -> dict:
    """`repeats` pairs (op, copy), back to back: each ratio compares two calls a few ms apart. The
    cases run one after another, not interleaved with each other: alternating multi-GB allocations
    of different sizes fragments glibc's heap (the benchmark's no-mmap, no-trim setting, conftest.py)
    so that later allocations get fresh pages and page faults (measured: the masked Gram at 9x)."""
    family, op, mode, B, make, target = case
    run, nbytes = make()
    src = torch.randn(*COPY_SHAPES[family])
    dst = torch.empty_like(src)
    copy_bytes = 2 * src.numel() * F32
    copy = lambda: dst.copy_(src)  # noqa: E731
    for _ in range(2):  # warm-up: allocations, first-touch pages
        run()
        copy()
    t_ops, floors = [], []
    for _ in range(repeats):
        t_ops.append(timed(run))
        t_copy = timed(copy)
        floors.append(nbytes / (copy_bytes / t_copy))
    ratios = [t / f for t, f in zip(t_ops, floors)]
    ratio = statistics.median(ratios)
    return dict(family=family, op=op, mode=mode, batch=B, bytes=nbytes, median_ms=1e3 * statistics.median(t_ops),
                floor_ms=1e3 * statistics.median(floors), x_floor=ratio, x_floor_range=[min(ratios), max(ratios)],
                target=target, met=ratio <= target)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed (op, copy) pairs per case")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="write the rows here (bench/report.py skips this file)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(t < 1 for t in args.threads):
        ap.error(f"--threads must be >= 1, got {args.threads}")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    meta = dict(cpu=cpu, cpu_capability=torch.backends.cpu.get_cpu_capability(), kernel_isa=_kernel_isa(),
                torch=torch.__version__, allocator=ALLOCATOR, repeats=args.repeats,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"CPU {cpu}, torch {torch.__version__} ({meta['cpu_capability']}), kernels {meta['kernel_isa']}; "
          f"{args.repeats} (op, copy) pairs per case; {meta['date']}")
    print("| op | mode | B | threads | fastsmall ms | floor ms | x floor (median; min-max) | target |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case in cases():
            r = measure(case, args.repeats)
            r["threads"] = threads
            results.append(r)
            lo, hi = r["x_floor_range"]
            print(f"| {r['op']} | {r['mode']} | {r['batch']} | {threads} | {r['median_ms']:.2f} | {r['floor_ms']:.2f} | "
                  f"{r['x_floor']:.2f} ({lo:.2f}-{hi:.2f}) | <= {r['target']:g} {'met' if r['met'] else 'MISSED'} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"floor_ratio": meta, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
