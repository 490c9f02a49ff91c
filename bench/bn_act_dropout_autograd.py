"""bn_act_dropout's C++ autograd node (csrc/autograd.cpp) against the Python formulas it replaced
(its OpDef formulas as a Python autograd.Function around the same registered kernels), forward +
backward with weight, bias, leaky ReLU 0.2 and dropout 0.25, y / weight / bias requiring grad, at
PoseAug's MLP shapes and CReST's channels-last BatchNorm views; paired per repeat in one process
(medians, µs). A first, untimed pass over every shape takes the fresh-buffer page faults.

    python bench/bn_act_dropout_autograd.py [--repeats 21] [--threads 2]
"""
import argparse
import statistics
import time

import torch

import fastsmall  # noqa: F401  (registers the ops)
from fastsmall.ops._dispatch import autograd_function
from fastsmall.ops.bn_act_dropout import _MLP
from bench_steps import machine_line

SHAPES = [(1024, 1024, torch.float32), (1024, 1024, torch.bfloat16), (1024, 256, torch.float32),
          (1024, 64, torch.float32), (64, 32, torch.float32), (30720, 32, torch.bfloat16), (7680, 64, torch.bfloat16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    F = torch.ops.fastsmall
    python_formulas = autograd_function("_PyBnActDropout", F.bn_act_dropout,
                                        _MLP.defs["bn_act_dropout"].formulas(F)).apply
    cases = []
    for N, C, dtype in SHAPES:
        g = torch.Generator().manual_seed(N + C)
        y = torch.randn(N, C, generator=g).to(dtype).requires_grad_()
        w, b = torch.randn(C, generator=g).requires_grad_(), torch.randn(C, generator=g).requires_grad_()
        seed, cot = torch.tensor([N]), torch.randn(N, C, generator=g).to(dtype)

        def run(op, y=y, w=w, b=b, seed=seed, cot=cot):
            out = op(y, w, b, None, None, None, seed, 1e-5, 0.2, 0.25)[0]
            torch.autograd.grad(out, (y, w, b), cot)

        cases.append(((N, C, dtype), lambda run=run: run(F.bn_act_dropout), lambda run=run: run(python_formulas)))
    for _, cpp, py in cases:  # warm-up
        cpp(), py()
    print(machine_line())
    print(f"{args.repeats} paired repeats\n\n| shape, dtype | C++ node µs | Python formulas µs | Python / C++ (paired) |\n"
          "|---|---|---|---|")
    for (N, C, dtype), cpp, py in cases:
        rows = []
        for _ in range(args.repeats):
            pair = []
            for fn in (cpp, py):
                start = time.perf_counter()
                fn()
                pair.append((time.perf_counter() - start) * 1e6)
            rows.append(pair)
        print(f"| [{N:,}, {C}] {str(dtype).split('.')[1]} | {statistics.median(r[0] for r in rows):.0f} | "
              f"{statistics.median(r[1] for r in rows):.0f} | {statistics.median(r[1] / r[0] for r in rows):.3f} |")


if __name__ == "__main__":
    main()
