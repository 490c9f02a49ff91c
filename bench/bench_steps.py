"""One training step per method, side by side in one process, interleaved, median of 5 repeats:
official eager fp32 (--impl official), fastsmall fp32, + --compile, + --precision bf16
(--channels-last for the CNN methods), + all. Prints the CPU, its matrix units, torch and the
thread count with every table.

    python bench/bench_steps.py [--repeats 5] [--steps 5] [--only crest,ke,dsd,poseaug] [--profile]

Rows:
* CReST+ step: digits-LT, 32 labelled + 2 x 224 unlabelled images (one step).
* KE epoch: digits-small (100 images, batch 32), generation 1.
* DSD sparse-phase epoch: digits-small, generation 2 (magnitude masks of 30 %, one masked_mul_ over
  the pruned weights after every optimizer step).
* PoseAug G+D iteration: B = 1,024 synthetic H36M poses, SimpleBaseline estimator (the generator
  step with the estimator's feedback, then both discriminator steps). "+ compile" / "+ bf16" only
  where poseaug's Config has the fields ``compile`` / ``precision`` (said when it has not).

``--profile`` also runs torch.profiler (CPU activities) over ``--profile-steps`` steps of every
configuration, after the timing, and prints per configuration the shares of the profiled wall
time: fastsmall ops (self CPU time of ``fastsmall::*`` events), GEMM + convolution (self time of
aten::mm / addmm / bmm / baddbmm / matmul / linear, the convolutions and their backward kernels,
oneDNN's linear / convolution ops of compiled graphs), other ops (every other dispatcher op, and
the generated kernels of compiled graphs, i.e. the self time of inductor's ``CompiledFxGraph``
calls), and Python / framework = wall time - all op self time (the interpreter, autograd's engine
and AccumulateGrad nodes, AOTAutograd's CompiledFunction and dynamo's guards, the optimizers'
Python, the profiler's own overhead). Self times are those of the calling thread: an op's
time includes its intra-op worker threads (OpenMP) since the caller waits for them.
"""
import argparse
import platform
import re
import time
import warnings

import torch

from fastsmall.methods.common.speed import matrix_units
from fastsmall.methods.steps import methods, time_interleaved

OP_NAME = re.compile(r"^(?!autograd::|torch::)[A-Za-z0-9_]+::")  # a dispatcher op: aten::, mkldnn::, prims::...
GEMM_CONV = {
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul", "aten::linear",
    "aten::_addmm_activation", "aten::convolution", "aten::_convolution", "aten::conv2d", "aten::conv1d",
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::mkldnn_convolution_backward",
    "aten::_mkldnn_convolution_backward", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward", "mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise",
    "mkldnn::_convolution_pointwise_", "aten::mkldnn_linear", "aten::mkldnn_linear_backward",
    "aten::mkldnn_linear_backward_input", "aten::mkldnn_linear_backward_weights",
}


# ---- machine, timing, profile --------------------------------------------------------------------

def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    units = {k: v for k, v in matrix_units().items() if v}
    return (f"CPU: {cpu}; matrix units: {units}; torch {torch.__version__}; Python {platform.python_version()}; "
            f"threads {torch.get_num_threads()}; load average {open('/proc/loadavg').read().split()[0]}")


def category(name: str) -> str | None:
    """fastsmall / gemm_conv / other for an op event; None for the rest (ProfilerStep, Optimizer.step,
    autograd::engine::evaluate_function, torch::autograd::AccumulateGrad, CompiledFunction, dynamo)."""
    if name.startswith("fastsmall::"):
        return "fastsmall"
    if name in GEMM_CONV:
        return "gemm_conv"
    if OP_NAME.match(name) or name.startswith("## Call CompiledFxGraph"):
        return "other"
    return None  # annotations and autograd / dynamo wrappers (their self time is framework time)


def profile_shares(fn, steps: int) -> dict:
    """Wall ms per step under the profiler and the shares of that wall time by category."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        wall_us = (time.perf_counter() - start) * 1e6
    sums = {"fastsmall": 0.0, "gemm_conv": 0.0, "other": 0.0}
    for e in prof.key_averages():
        cat = category(e.key)
        if cat is not None:
            sums[cat] += e.self_cpu_time_total
    shares = {k: v / wall_us for k, v in sums.items()}
    shares["python"] = 1.0 - sum(shares.values())
    shares["ms"] = wall_us / steps / 1e3
    return shares


def run_method(key, title, make, unit, configs, note, args) -> None:
    print(f"\n## {title}\n{machine_line()}")
    if note:
        print(f"note: {note}")
    runs = {}
    for label, kw in configs.items():
        start = time.perf_counter()
        runs[label] = make(**kw)
        for _ in range(args.warmup):
            runs[label]()
        print(f"  built and warmed up {label!r} in {time.perf_counter() - start:.1f} s", flush=True)
    median = time_interleaved(runs, args.repeats, args.steps)
    base = median["official fp32"]
    print(f"\n| configuration | ms / {unit} | vs official |\n|---|---|---|")
    for label, ms in median.items():
        print(f"| {label} | {ms:.1f} | {base / ms:.2f}x |")
    if args.profile:
        print(f"\nprofile ({args.profile_steps} {unit}s per configuration under torch.profiler; shares of its wall time)")
        print(f"\n| configuration | ms / {unit} profiled | fastsmall ops | GEMM + conv | other ops | Python / framework |")
        print("|---|---|---|---|---|---|")
        for label, fn in runs.items():
            s = profile_shares(fn, args.profile_steps)
            print(f"| {label} | {s['ms']:.1f} | {s['fastsmall']:.2%} | {s['gemm_conv']:.1%} | {s['other']:.1%} | "
                  f"{s['python']:.1%} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps timed per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (compilation)")
    ap.add_argument("--only", default="crest,ke,dsd,poseaug",
                    help="comma-separated subset of crest, ke, dsd, poseaug (default: all)")
    ap.add_argument("--profile", action="store_true", help="also print the profile shares of every configuration")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    rows = methods()
    unknown = sorted(set(only) - {r[0] for r in rows})
    if unknown:
        ap.error(f"--only: unknown {unknown}; choose from crest, ke, dsd, poseaug")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    for row in rows:
        if row[0] in only:
            run_method(*row, args)


if __name__ == "__main__":
    main()
