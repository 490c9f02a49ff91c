"""Small batches, quiet and loaded: every fastsmall op as the methods call it (``fastsmall.ops``)
against its eager reference (``fastsmall.reference``), interleaved in one process (issue #12,
"threading that pays": no op slower than eager at B = 1,024 on a loaded machine).

    python bench/bench_small_batch.py                 # quiet machine (nothing started)
    python bench/bench_small_batch.py --load          # with a competing load (see below)
    python bench/bench_small_batch.py --both          # quiet, then loaded, one table each
    python bench/bench_small_batch.py --calibrate     # single-thread cost per item of each C++ kernel
    python bench/bench_small_batch.py --overhead      # fs.ops fwd+bwd over the bare kernels (issue #17)

Cases (float32), fwd and fwd+bwd (``torch.autograd.grad`` of every output against random
cotangents) where the op has a gradient, at B = 256, 1,024, 4,096 (``--sizes``): the KCS family on
H36M-16 poses (``kcs_forward``, ``bone_decompose``, ``kcs_inverse`` with a root: PoseAug's
augmentor and discriminator), ``part_kcs_gram`` compact (PoseAug's 3D discriminator),
``distribution_align`` without probabilities (``DistAlign``, CReST+), ``softmax_batch_mean`` and
``masked_cross_entropy`` at C = 10 (digits-LT / CIFAR-10-LT) and C = 1,000 at B = 1,024; and
``ke_reinit_`` (KELS) / ``masked_mul_`` (30 % magnitude masks) over the conv/linear weights of
the digits CNN (65 k weights: KE / DSD on digits-small; "B" is that weight count).

Each sample times enough calls for ~``--sample-ms`` and divides; the implementations (eager,
fastsmall, fastsmall on one thread) alternate inside every repeat, in a rotating order; the
table has the median of ``--repeats`` samples per implementation, in microseconds per call.

``--load`` starts a subprocess that multiplies 256 x 256 float32 matrices in a loop on 2 threads
(``torch.set_num_threads(2)``) for the whole measurement and stops it at the end: a machine whose
cores are all busy, as when other jobs share it. The ops run with ``--threads`` (default 2).

``--calibrate`` times the registered C++ kernels (``torch.ops.fastsmall.*``) on one thread and
prints nanoseconds per pose / row / element: the per-item costs the grain sizes of
``csrc/cpu/pose_loop.h`` (and of the distribution-align and ke_reinit kernels) are chosen from.
``--overhead`` times, on one thread at B = 1,024 (``--sizes``), each differentiable op's forward+backward
four ways, interleaved: the bare kernels (``torch.ops.fastsmall.<op>`` and its ``<op>_backward``
called directly under ``no_grad``: no autograd at all), ``fastsmall.ops`` (the public wrapper and
the C++ autograd kernels of csrc/autograd.cpp), the same formulas as a Python
``torch.autograd.Function`` around the op (what ``torch.library.register_autograd`` registered
before the C++ kernels), and the eager reference; "overhead" is fastsmall.ops minus the bare
kernels (target: <= 10 us), "eager / fastsmall" the speed-up (target: >= 3x).

To compare builds, run the script with ``PYTHONPATH`` pointing at a copy of the package built from
the old sources; the header names the ``fastsmall`` it imported.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

import torch

import fastsmall as fs
from fastsmall.methods.dsd.masks import magnitude_masks
from fastsmall.methods.ke.masks import split_masks
from fastsmall.methods.models import DigitsCNN

SK = fs.Skeleton.h36m16()
J, NB = SK.num_joints, SK.num_bones
TEMPERATURE, THRESHOLD = 0.5, 0.95
LOAD_CODE = """
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
b = torch.randn(256, 256)
while True:
    torch.mm(a, b)
"""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "?")
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"CPU: {cpu} ({os.cpu_count()} logical CPUs; {' '.join(isa)}); "
            f"torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}; "
            f"torch {torch.__version__}; threads {torch.get_num_threads()}; fastsmall from "
            f"{os.path.dirname(fs.__file__)}")


# ---- cases -----------------------------------------------------------------------------------

def _grad_run(fn, inputs):
    """fwd+bwd: the op and torch.autograd.grad of all its outputs w.r.t. ``inputs``."""
    with torch.no_grad():
        outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    cot = [torch.randn_like(o) for o in outs]
    ins = [t.detach().clone().requires_grad_() for t in inputs]

    def run():
        out = fn(*ins)
        return torch.autograd.grad(out if isinstance(out, tuple) else (out,), ins, cot)
    return run


def pose_cases(B: int):
    """(op, mode, make(ops) -> run) of the pose ops at batch B."""
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, J, 3, generator=g)
    bones = torch.randn(B, NB, 3, generator=g)
    root = torch.randn(B, 1, 3, generator=g)
    unit = torch.nn.functional.normalize(torch.randn(B, NB, 3, generator=g), dim=-1)
    table = [
        ("kcs_forward", lambda ops: (lambda t: ops.kcs_forward(t, SK)), (x,)),
        ("bone_decompose", lambda ops: (lambda t: ops.bone_decompose(t, SK)), (x,)),
        ("kcs_inverse", lambda ops: (lambda b, r: ops.kcs_inverse(b, SK, r)), (bones, root)),
        ("part_kcs_gram compact", lambda ops: (lambda u: ops.part_kcs_gram(u, SK, "compact")), (unit,)),
    ]
    for name, op_of, inputs in table:
        yield name, "fwd", (lambda ops, op_of=op_of, inputs=inputs: (lambda f=op_of(ops): f(*inputs)))
        yield name, "fwd+bwd", (lambda ops, op_of=op_of, inputs=inputs: _grad_run(op_of(ops), inputs))


def logit_cases(B: int, C: int):
    g = torch.Generator().manual_seed(B * 7 + C)
    logits = torch.randn(B, C, generator=g) * 3
    prior = torch.rand(C, generator=g) + 0.05
    running = torch.softmax(torch.randn(C, generator=g), 0)
    target = torch.randint(0, C, (B,), generator=g)
    mask = torch.rand(B, generator=g) < 0.75
    yield (f"distribution_align C={C}", "fwd",
           lambda ops: (lambda: ops.distribution_align(logits, prior, running, TEMPERATURE, THRESHOLD,
                                                       return_probs=False)))
    yield f"softmax_batch_mean C={C}", "fwd", lambda ops: (lambda: ops.softmax_batch_mean(logits))
    yield f"masked_cross_entropy C={C}", "fwd", lambda ops: (lambda: ops.masked_cross_entropy(logits, target, mask))
    yield (f"masked_cross_entropy C={C}", "fwd+bwd",
           lambda ops: _grad_run(lambda z: ops.masked_cross_entropy(z, target, mask), (logits,)))


def model_cases():
    """ke_reinit_ / masked_mul_ over the digits CNN's conv/linear weights, as KE and DSD call them."""
    torch.manual_seed(0)
    model = DigitsCNN()
    ke_masks = split_masks(model, 0.5)
    params = dict(model.named_parameters())
    ke_ws = [params[n].detach().clone() for n in ke_masks]
    dsd_masks = magnitude_masks(model, 0.3)
    dsd_ws = [params[n].detach().clone() for n in dsd_masks]
    numel = sum(w.numel() for w in ke_ws)

    def reinit(ops):
        state = {"generation": 0}

        def run():
            state["generation"] += 1
            ops.ke_reinit_(ke_ws, list(ke_masks.values()), 0, state["generation"])
        return run

    yield "ke_reinit_ KELS (digits CNN)", "fwd", reinit, numel
    yield ("masked_mul_ (digits CNN)", "fwd", lambda ops: (lambda: ops.masked_mul_(dsd_ws, list(dsd_masks.values()))),
           numel)


def all_cases(sizes):
    for B in sizes:
        for name, mode, make in pose_cases(B):
            yield name, mode, B, make
        for name, mode, make in logit_cases(B, 10):
            yield name, mode, B, make
    if 1024 in sizes:
        for name, mode, make in logit_cases(1024, 1000):
            yield name, mode, 1024, make
    for name, mode, make, numel in model_cases():
        yield name, mode, numel, make


# ---- timing ------------------------------------------------------------------------------------

def _sample(fn, calls: int, threads: int) -> float:
    """Microseconds per call over ``calls`` calls on ``threads`` threads."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def measure(args) -> None:
    print(f"\n### {'loaded' if args.loaded else 'quiet'}: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
          f"UTC, load average before {open('/proc/loadavg').read().split()[0]}"
          + (", competing load: 2-thread 256x256 matmul loop" if args.loaded else ""))
    print("\n| op | mode | B | eager µs | fastsmall µs | fastsmall 1 thread µs | eager / fastsmall |")
    print("|---|---|---|---|---|---|---|")
    slower = []
    for name, mode, B, make in all_cases(args.sizes):
        runs = {"eager": (make(fs.reference), args.threads), "fastsmall": (make(fs.ops), args.threads),
                "fastsmall 1 thread": (make(fs.ops), 1)}
        calls = {}
        for label, (fn, threads) in runs.items():  # warm up, and calls per sample for ~sample_ms
            _sample(fn, 3, threads)
            once = min(_sample(fn, 1, threads) for _ in range(3))
            calls[label] = max(1, int(args.sample_ms * 1e3 / max(once, 1.0)))
        times = {label: [] for label in runs}
        labels = list(runs)
        for r in range(args.repeats):
            for label in labels[r % 3:] + labels[:r % 3]:
                fn, threads = runs[label]
                times[label].append(_sample(fn, calls[label], threads))
        torch.set_num_threads(args.threads)
        med = {label: statistics.median(v) for label, v in times.items()}
        ratio = med["eager"] / med["fastsmall"]
        if ratio < 1:
            slower.append(f"{name} {mode} B={B}")
        print(f"| {name} | {mode} | {B:,} | {med['eager']:.1f} | {med['fastsmall']:.1f} | "
              f"{med['fastsmall 1 thread']:.1f} | {ratio:.2f}x |", flush=True)
    print("\nslower than eager:", ", ".join(slower) if slower else "none")


def with_load(args) -> None:
    proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # let the load start its threads
        args.loaded = True
        measure(args)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- calibration ---------------------------------------------------------------------------

def calibrate(args) -> None:
    """Single-thread ns per item of every C++ kernel (torch.ops.fastsmall, no Python wrapper)."""
    F = torch.ops.fastsmall
    P = list(SK.parents)
    pb, ps = SK.op_parts
    torch.set_num_threads(1)

    def best(fn, n):
        for _ in range(3):
            fn()
        return min(_sample(fn, n, 1) for _ in range(args.repeats))

    print("\n| kernel | items | µs / call (1 thread) | ns / item |\n|---|---|---|---|")
    for B in args.sizes:
        g = torch.Generator().manual_seed(B)
        x, b = torch.randn(B, J, 3, generator=g), torch.randn(B, NB, 3, generator=g)
        root, gx, gl = torch.randn(B, 1, 3, generator=g), torch.randn(B, J, 3, generator=g), torch.randn(B, NB, 1)
        gc = torch.randn(B, sum(n * n for n in ps), generator=g)
        rows = {
            "kcs_forward": lambda: F.kcs_forward(x, P),
            "kcs_forward_backward": lambda: F.kcs_forward_backward(b, P),
            "bone_decompose": lambda: F.bone_decompose(x, P, 0.0),
            "bone_decompose_backward": lambda: F.bone_decompose_backward(b, gl, x, P, 0.0),
            "kcs_inverse": lambda: F.kcs_inverse(b, P, root),
            "kcs_inverse_backward": lambda: F.kcs_inverse_backward(gx, P),
            "part_kcs_gram (compact)": lambda: F.part_kcs_gram(b, pb, ps, True),
            "part_kcs_gram_backward (compact)": lambda: F.part_kcs_gram_backward(gc, b, pb, ps, True),
        }
        for name, fn in rows.items():
            us = best(fn, max(3, 100_000 // B))
            print(f"| {name} | {B:,} poses | {us:.1f} | {us * 1e3 / B:.1f} |", flush=True)
    for B, C in ((1024, 10), (4096, 10), (1024, 1000)):
        g = torch.Generator().manual_seed(B)
        z = torch.randn(B, C, generator=g) * 3
        prior, running = torch.rand(C, generator=g) + 0.05, torch.softmax(torch.randn(C, generator=g), 0)
        target, mask = torch.randint(0, C, (B,), generator=g), torch.rand(B, generator=g) < 0.75
        one = torch.ones(())
        rows = {
            "distribution_align": lambda: F.distribution_align(z, prior, running, 0.5, 0.95, 1e-6, False),
            "softmax_batch_mean": lambda: F.softmax_batch_mean(z),
            "masked_cross_entropy": lambda: F.masked_cross_entropy(z, target, mask),
            "masked_cross_entropy_backward": lambda: F.masked_cross_entropy_backward(one, z, target, mask),
        }
        for name, fn in rows.items():
            us = best(fn, max(3, 100_000 // B))
            print(f"| {name} C={C} | {B:,} rows ({B * C:,} logits) | {us:.1f} | {us * 1e3 / (B * C):.2f} per logit |",
                  flush=True)
    for name, mode, make, numel in model_cases():
        us = best(make(fs.ops), 50)
        print(f"| {name} | {numel:,} weights | {us:.1f} | {us * 1e3 / numel:.2f} per weight |", flush=True)


# ---- overhead of the autograd layer ----------------------------------------------------------------

def overhead_cases(B: int):
    """(op, inputs, bare_fwd, bare, python_layer, make(ops)) per differentiable op at batch B: ``bare_fwd``
    calls the forward op directly, ``bare`` the forward and backward ops (no autograd), ``python_layer``
    runs the op's formulas as a Python autograd.Function around the op."""
    import importlib

    from fastsmall.ops._dispatch import autograd_function

    # the modules (fastsmall.ops.part_kcs_gram etc. are the public functions)
    da_mod, kcs_mod, gram_mod = (importlib.import_module(f"fastsmall.ops.{m}")
                                 for m in ("distribution_align", "kcs", "part_kcs_gram"))

    F = torch.ops.fastsmall
    P = list(SK.parents)
    pb, ps = SK.op_parts
    g = torch.Generator().manual_seed(B)
    x, bones = torch.randn(B, J, 3, generator=g), torch.randn(B, NB, 3, generator=g)
    root = torch.randn(B, 1, 3, generator=g)
    unit = torch.nn.functional.normalize(torch.randn(B, NB, 3, generator=g), dim=-1)
    logits = torch.randn(B, 10, generator=g) * 3
    target, mask = torch.randint(0, 10, (B,), generator=g), torch.rand(B, generator=g) < 0.75

    def python_layer(family, name):
        d = family.defs[name]
        return autograd_function(f"_Py_{name}", getattr(F, name), d.formulas(F)).apply

    def bare(fwd, bwd):
        def run():
            with torch.no_grad():
                outs = fwd()
                return bwd(outs)
        return fwd, run

    cot = {}

    def cot_of(key, like):
        if key not in cot:
            cot[key] = torch.randn_like(like)
        return cot[key]

    py_kcs = python_layer(kcs_mod._KCS, "kcs_forward")
    py_bone = python_layer(kcs_mod._KCS, "bone_decompose")
    py_inv = python_layer(kcs_mod._KCS, "kcs_inverse")
    py_gram = python_layer(gram_mod._GRAM, "part_kcs_gram")
    py_mce = python_layer(da_mod._ALIGN, "masked_cross_entropy")
    one = torch.ones(())
    yield ("kcs_forward", (x,),
           *bare(lambda: F.kcs_forward(x, P), lambda o: F.kcs_forward_backward(cot_of("kf", o), P)),
           lambda t: py_kcs(t, P), lambda ops: (lambda t: ops.kcs_forward(t, SK)))
    yield ("bone_decompose", (x,),
           *bare(lambda: F.bone_decompose(x, P, 0.0),
                lambda o: F.bone_decompose_backward(cot_of("bu", o[0]), cot_of("bl", o[1]), x, P, 0.0)),
           lambda t: py_bone(t, P, 0.0), lambda ops: (lambda t: ops.bone_decompose(t, SK)))
    yield ("kcs_inverse", (bones, root),
           *bare(lambda: F.kcs_inverse(bones, P, root), lambda o: F.kcs_inverse_backward(cot_of("ki", o), P)),
           lambda b, r: py_inv(b, P, r), lambda ops: (lambda b, r: ops.kcs_inverse(b, SK, r)))
    yield ("part_kcs_gram compact", (unit,),
           *bare(lambda: F.part_kcs_gram(unit, pb, ps, True),
                lambda o: F.part_kcs_gram_backward(cot_of("pg", o), unit, pb, ps, True)),
           lambda u: py_gram(u, pb, ps, True), lambda ops: (lambda u: ops.part_kcs_gram(u, SK, "compact")))
    yield ("masked_cross_entropy C=10", (logits,),
           *bare(lambda: F.masked_cross_entropy(logits, target, mask),
                lambda o: F.masked_cross_entropy_backward(cot_of("mc", o), logits, target, mask)),
           lambda z: py_mce(z, target, mask), lambda ops: (lambda z: ops.masked_cross_entropy(z, target, mask)))


def _engine_reference(B: int):
    """aten.neg (a one-kernel aten op with a C++ autograd formula) timed like the fastsmall ops: the
    cost every differentiable op pays for recording a node and for torch.autograd.grad."""
    x = torch.randn(B, J, 3)
    cot = torch.randn_like(x)
    bare_fwd = lambda: torch.neg(x)  # noqa: E731

    def bare():
        with torch.no_grad():
            torch.neg(x)
            return torch.neg(cot)
    return "aten.neg (engine reference)", (x,), bare_fwd, bare, None, lambda ops: torch.neg


def overhead(args) -> None:
    torch.set_num_threads(1)
    print("\n| op | B | bare fwd µs | fastsmall.ops fwd µs (recording) | fwd overhead µs | bare fwd+bwd µs | "
          "fastsmall.ops fwd+bwd µs | fwd+bwd overhead µs | Python autograd layer fwd+bwd µs | eager fwd+bwd µs | "
          "eager / fastsmall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for B in args.sizes:
        for name, inputs, bare_fwd, bare, py_op, op_of in [*overhead_cases(B), _engine_reference(B)]:
            ins = [t.detach().clone().requires_grad_() for t in inputs]
            fwd = op_of(fs.ops)
            runs = {"bare fwd": bare_fwd, "fwd": (lambda f=fwd: f(*ins)), "bare": bare,
                    "fastsmall": _grad_run(fwd, inputs)}
            if py_op is not None:
                runs["python"] = _grad_run(py_op, inputs)
                runs["eager"] = _grad_run(op_of(fs.reference), inputs)
            calls = {}
            for label, fn in runs.items():
                _sample(fn, 3, 1)
                once = min(_sample(fn, 1, 1) for _ in range(3))
                calls[label] = max(1, int(args.sample_ms * 1e3 / max(once, 1.0)))
            times = {label: [] for label in runs}
            labels = list(runs)
            for r in range(args.repeats):
                k = r % len(labels)
                for label in labels[k:] + labels[:k]:
                    times[label].append(_sample(runs[label], calls[label], 1))
            med = {label: statistics.median(v) for label, v in times.items()}
            na = "–"
            print(f"| {name} | {B:,} | {med['bare fwd']:.1f} | {med['fwd']:.1f} | {med['fwd'] - med['bare fwd']:.1f} | "
                  f"{med['bare']:.1f} | {med['fastsmall']:.1f} | {med['fastsmall'] - med['bare']:.1f} | "
                  f"{med['python']:.1f} | {med['eager']:.1f} | {med['eager'] / med['fastsmall']:.2f}x |"
                  if py_op is not None else
                  f"| {name} | {B:,} | {med['bare fwd']:.1f} | {med['fwd']:.1f} | {med['fwd'] - med['bare fwd']:.1f} | "
                  f"{med['bare']:.1f} | {med['fastsmall']:.1f} | {med['fastsmall'] - med['bare']:.1f} | {na} | {na} | "
                  f"{na} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--load", action="store_true", help="measure under a competing 2-thread matmul load")
    ap.add_argument("--both", action="store_true", help="measure quiet, then under the load")
    ap.add_argument("--calibrate", action="store_true", help="single-thread cost per item of the C++ kernels")
    ap.add_argument("--overhead", action="store_true", help="fs.ops fwd+bwd against the bare kernels, 1 thread")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (default 256 1024 4096; "
                    "--overhead: 1024)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sample-ms", type=float, default=10.0, help="target length of one timing sample")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    if args.sizes is None:
        args.sizes = [1024] if args.overhead else [256, 1024, 4096]
    if args.calibrate:
        calibrate(args)
        return
    if args.overhead:
        overhead(args)
        return
    args.loaded = False
    if not args.load or args.both:
        measure(args)
    if args.load or args.both:
        with_load(args)


if __name__ == "__main__":
    main()
