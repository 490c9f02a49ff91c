"""What bf16 gives this CPU's matrix work: a 1,024 x 1,024 x 1,024 ``torch.addmm`` in float32 and in
bfloat16, on 1 and 2 threads, medians of 11 (GFLOP/s). With AVX512-BF16 or AMX-BF16 the bf16 row is
faster; without them bf16 is emulated and slower.

    python bench/matmul_peak.py [--size 1024] [--threads 1 2]
"""
import argparse
import time

import torch

from bench_steps import machine_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    n = args.size
    print(machine_line())
    print("\n| threads | dtype | ms | GFLOP/s |\n|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            a, b, bias = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.randn(n, dtype=dtype)
            torch.addmm(bias, a, b.t())
            times = []
            for _ in range(11):
                start = time.perf_counter()
                torch.addmm(bias, a, b.t())
                times.append(time.perf_counter() - start)
            ms = sorted(times)[5] * 1e3
            print(f"| {threads} | {str(dtype).split('.')[1]} | {ms:.2f} | {2 * n ** 3 / ms / 1e6:.0f} |")


if __name__ == "__main__":
    main()
