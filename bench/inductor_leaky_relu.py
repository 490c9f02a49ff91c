"""Why PoseAug's compiled D step was slower than eager (issue #12): inductor's CPU code for
leaky-ReLU forward + backward, and the fix the discriminators use.

    python bench/inductor_leaky_relu.py [--d-step]

Table 1, alone: five [2,048, 256] float32 activations (the 3D discriminator's five part paths at
B = 2,048), ``sum(f(x)).backward()``: eager ``F.leaky_relu``, compiled ``F.leaky_relu``, compiled
``torch.where(x > 0, x, 0.01 x)``, compiled ``torch.maximum(x, 0.01 x)`` (the same values; its
gradient differs only at x == 0 exactly, where maximum splits a tie). All three compiled forms save
a bool mask for the backward; inductor's vectorized store of a bool tensor is the slow part.

Table 2, as in the discriminator: each activation feeds a linear layer (256 -> 256), forward +
backward: eager, compiled ``F.leaky_relu``, compiled ``poseaug.discriminators.leaky_relu`` (inside
a compiled graph its backward reads the saved output, the next matmul's input anyway, and needs no
bool mask; F.leaky_relu's exact gradient).

``--d-step``: the 3D + 2D discriminator step of PoseAug (B = 1,024 real + 1,024 fake), eager against
``--compile``.

Interleaved medians of 9, 2 threads. Prints the CPU.
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastsmall.methods.poseaug.discriminators import leaky_relu  # noqa: E402


def _time(steps: dict, repeats: int = 9) -> dict:
    for s in steps.values():
        for _ in range(3):
            s()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _print(times: dict, base: str) -> None:
    for k, m in times.items():
        print(f"{k:<55} {m * 1e3:8.2f} ms  {m / times[base]:5.2f}x eager")


def alone():
    xs = [torch.randn(2048, 256, requires_grad=True) for _ in range(5)]
    forms = {
        "F.leaky_relu": lambda x: F.leaky_relu(x),
        "torch.where(x > 0, x, 0.01 x)": lambda x: torch.where(x > 0, x, 0.01 * x),
        "torch.maximum(x, 0.01 x)": lambda x: torch.maximum(x, 0.01 * x),
    }
    runs = {"eager F.leaky_relu": forms["F.leaky_relu"]}
    runs.update({f"compiled {k}": torch.compile(v) for k, v in forms.items()})
    print("\n## alone: five activations, forward + backward\n")
    _print(_time({k: (lambda f=f: sum(f(x).sum() for x in xs).backward()) for k, f in runs.items()}),
           "eager F.leaky_relu")


def layered():
    xs = [torch.randn(2048, 256) for _ in range(5)]
    w1 = [torch.randn(256, 256, requires_grad=True) for _ in range(5)]
    w2 = [torch.randn(256, 256, requires_grad=True) for _ in range(5)]

    def model(act):
        return lambda: sum(F.linear(act(F.linear(x, a)), b).sum() for x, a, b in zip(xs, w1, w2))

    runs = {"eager F.leaky_relu": model(F.leaky_relu),
            "compiled F.leaky_relu": torch.compile(model(F.leaky_relu), fullgraph=True),
            "compiled discriminators.leaky_relu (fastsmall)": torch.compile(model(leaky_relu), fullgraph=True)}
    print("\n## as in the discriminator: linear -> activation -> linear, five paths, forward + backward\n")
    _print(_time({k: (lambda f=f: f().backward()) for k, f in runs.items()}), "eager F.leaky_relu")


def d_step():
    from fastsmall.methods.poseaug.config import Config
    from fastsmall.methods.poseaug.data import synthetic
    from fastsmall.methods.poseaug.gan import AugmentationGAN
    poses = synthetic.generate(1024, seed=0)
    fake = synthetic.generate(1024, seed=1)
    steps = {}
    for label, compiled in (("eager D step", False), ("compiled D step (--compile)", True)):
        torch.manual_seed(0)
        gan = AugmentationGAN(Config(quiet=True, out=tempfile.mkdtemp(), compile=compiled), poses.skeleton,
                              torch.device("cpu"))
        steps[label] = (lambda g=gan: g.discriminator_step(poses.poses_3d, poses.poses_2d, fake.poses_3d,
                                                           fake.poses_2d))
    print("\n## PoseAug's discriminator steps (3D + 2D, B = 1,024 real + 1,024 fake)\n")
    _print(_time(steps), "eager D step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-step", action="store_true", help="also PoseAug's D step, eager vs compiled")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu} ({torch.backends.cpu.get_cpu_capability()}); torch {torch.__version__}; 2 threads")
    alone()
    layered()
    if args.d_step:
        d_step()


if __name__ == "__main__":
    main()
