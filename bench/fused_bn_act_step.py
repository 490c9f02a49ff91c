"""What the fused BatchNorm -> ReLU of DigitsCNN (``bn_act_dropout_layer`` on channels-last maps,
``--impl fused --channels-last``) does to a whole training step: the same step with the fused
layers and with the modules (``FUSED_BN_ACT_MIN_ELEMENTS`` raised past every map), beside the
official eager fp32 step, timed in turn within every repeat (medians; the paired ratio of the two
variants per repeat, so a drift of the shared machine hits both alike).

    python bench/fused_bn_act_step.py [--method crest|ke] [--precision bf16|fp32] [--repeats 21]
"""
import argparse
import statistics
import time
import warnings

import torch

from fastsmall.methods import models
from fastsmall.methods.steps import crest, ke
from fastsmall.methods.common.speed import bf16_units
from bench_steps import machine_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=("crest", "ke"), default="crest")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--steps", type=int, default=3, help="steps (KE: epochs) per timed call")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.threads < 1:
        ap.error("--repeats, --steps and --threads must be >= 1")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    make = {"crest": crest, "ke": ke}[args.method]
    default = models.FUSED_BN_ACT_MIN_ELEMENTS
    runs = {"official fp32": (make(impl="official"), default),
            "fused layers": (make(precision=args.precision, channels_last=True), default),
            "modules": (make(precision=args.precision, channels_last=True), 2 ** 62)}

    def timed(label):
        fn, threshold = runs[label]
        models.FUSED_BN_ACT_MIN_ELEMENTS = threshold
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - start) / args.steps * 1e3

    try:
        for label in runs:  # warm-up
            timed(label)
        rows = [{label: timed(label) for label in runs} for _ in range(args.repeats)]
    finally:
        models.FUSED_BN_ACT_MIN_ELEMENTS = default
    print(machine_line())
    units = "bf16 on matrix units" if args.precision == "bf16" and bf16_units(torch.device("cpu"))[0] else args.precision
    print(f"{args.method}, --precision {args.precision} ({units}) --channels-last, {args.repeats} repeats of "
          f"{args.steps} steps, medians (ms)\n")
    med = {label: statistics.median(r[label] for r in rows) for label in runs}
    print("| variant | ms / step | vs official fp32 |\n|---|---|---|")
    for label, ms in med.items():
        print(f"| {label} | {ms:.2f} | {med['official fp32'] / ms:.2f}x |")
    paired = sorted(r["modules"] / r["fused layers"] for r in rows)
    print(f"\nmodules / fused layers, paired per repeat: median {statistics.median(paired):.3f} "
          f"(range {paired[0]:.3f}-{paired[-1]:.3f}); {sum(p > 1 for p in paired)}/{len(paired)} repeats faster fused")


if __name__ == "__main__":
    main()
