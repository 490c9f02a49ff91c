"""Does ``--precision bf16`` preserve a method's results? Knowledge Evolution (KELS, s_r = 0.5) on
digits-small, fp32 against bf16 for the same seeds, paired.

    python bench/bf16_parity.py [--seeds 0 1 2 3 4] [--generations 3] [--out runs/bf16-parity]

On a machine without bf16 matrix units the bf16 runs are *emulated* (FASTSMALL_BF16_EMULATE=1,
set here): the same bf16 numerics -- bf16 operands, float32 accumulation, everything that stays
float32 staying float32 -- at ~10x fp32's time instead of faster. That answers the numerical
question (does the test accuracy move beyond the seed-to-seed spread?), not the speed one.
KE is the method this machine can afford in bf16 emulation (a CReST+ step is 14x slower
emulated: an hour per generation set); CReST+ and PoseAug are left to a machine with the units.

Reports per seed the last generation's test accuracy (never a best-on-test pick) in fp32 and
bf16, their paired difference, mean +- std over seeds and a 95 % t-interval of the difference,
next to fp32's seed-to-seed standard deviation.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import time

os.environ.setdefault("FASTSMALL_BF16_EMULATE", "1")  # before the methods read it (no effect with bf16 units)

import torch  # noqa: E402

from fastsmall.methods import ke  # noqa: E402
from fastsmall.methods.common.speed import bf16_units  # noqa: E402

T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def run(seed: int, precision: str, generations: int, out: str) -> dict:
    cfg = ke.Config(split="kels", split_rate=0.5, generations=generations, seed=seed, precision=precision,
                    quiet=True, resume=True, out=f"{out}/{precision}-seed{seed}")
    return ke.train(cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--out", default="runs/bf16-parity")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # an 8x8 CNN gains nothing from intra-op threads (as the demo)
    units = bf16_units(torch.device("cpu"))[0]
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        fp32 = run(seed, "fp32", args.generations, args.out)
        bf16 = run(seed, "bf16", args.generations, args.out)
        rows.append((seed, fp32["test_accuracy"], bf16["test_accuracy"]))
        print(f"seed {seed}: fp32 {fp32['test_accuracy']:.4f}  bf16 {bf16['test_accuracy']:.4f}", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\nKnowledge Evolution, KELS s_r = 0.5, digits-small, {args.generations} generations x "
          f"{ke.Config().epochs} epochs; last generation's test accuracy. bf16 "
          f"{'on bf16 matrix units' if units else 'EMULATED (no bf16 matrix units on this CPU)'}; {cpu}, torch "
          f"{torch.__version__}, Python {platform.python_version()}, {(time.perf_counter() - start) / 60:.1f} min.\n")
    print("| seed | fp32 | bf16 | bf16 - fp32 |\n|---|---|---|---|")
    for seed, a, b in rows:
        print(f"| {seed} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    fp, bf = [r[1] for r in rows], [r[2] for r in rows]
    diff = [b - a for a, b in zip(fp, bf)]
    n = len(rows)
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else float("nan")  # noqa: E731
    half = T95.get(n, 1.96) * sd(diff) / math.sqrt(n) if n > 1 else float("nan")
    print(f"| mean +- std | {statistics.mean(fp):.4f} +- {sd(fp):.4f} | {statistics.mean(bf):.4f} +- {sd(bf):.4f} | "
          f"{statistics.mean(diff):+.4f} +- {sd(diff):.4f} |")
    print(f"\npaired difference bf16 - fp32: {statistics.mean(diff):+.4f}, 95 % interval "
          f"[{statistics.mean(diff) - half:+.4f}, {statistics.mean(diff) + half:+.4f}]; fp32 seed-to-seed std "
          f"{sd(fp):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
