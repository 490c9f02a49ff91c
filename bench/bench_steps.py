"""One training step per method, side by side in one process, interleaved, median of 5 repeats:
official eager fp32 (--impl official), fastsmall fp32, + --compile, + --precision bf16
--channels-last, + all three. Prints the CPU and its matrix units with the table.

    python bench/bench_steps.py [--repeats 5] [--steps 5]

(Profile shares per configuration and the PoseAug step are not here yet: issue #12 is open.)
"""
import argparse
import platform
import tempfile
import time

import torch

from fastsmall.methods.common import Distributed
from fastsmall.methods.common.speed import matrix_units
from fastsmall.methods.crest.config import Config as CrestConfig
from fastsmall.methods.crest.train import CReSTTrainer
from fastsmall.methods.ke.config import Config as KEConfig
from fastsmall.methods.ke.train import KETrainer

CONFIGS = {
    "official fp32": dict(impl="official"),
    "fastsmall fp32": {},
    "+ compile": dict(compile=True),
    "+ bf16 + channels-last": dict(precision="bf16", channels_last=True),
    "+ all three": dict(precision="bf16", channels_last=True, compile=True),
}


def crest(**kw):
    cfg = CrestConfig(plus=True, quiet=True, out=tempfile.mkdtemp(), steps_per_epoch=1, epochs=10 ** 6, **kw)
    t = CReSTTrainer(cfg, Distributed(torch.device("cpu")))
    t._fresh_generation_state()
    t.steps_total = 10 ** 6
    return t._train_epoch


def ke(**kw):
    cfg = KEConfig(quiet=True, out=tempfile.mkdtemp(), epochs=10, warmup_epochs=1, **kw)
    t = KETrainer(cfg, Distributed(torch.device("cpu")))
    t.build_model()
    return t.train_epoch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; {platform.python_version()}; torch {torch.__version__}; threads 2")
    print("matrix units:", {k: v for k, v in matrix_units().items() if v})
    for name, make, unit in (("CReST+ step (digits-LT, 32 + 2 x 224 images)", crest, "step"),
                             ("KE epoch (digits-small, 100 images, batch 32)", ke, "epoch")):
        runs = {label: make(**kw) for label, kw in CONFIGS.items()}
        for fn in runs.values():
            for _ in range(3):
                fn()
        times = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, fn in runs.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                times[label].append((time.perf_counter() - start) / args.steps * 1e3)
        median = {label: sorted(v)[len(v) // 2] for label, v in times.items()}
        base = median["official fp32"]
        print(f"\n{name}\n| configuration | ms / {unit} | vs official |\n|---|---|---|")
        for label, ms in median.items():
            print(f"| {label} | {ms:.1f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
