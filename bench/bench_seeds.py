"""Many seeds stacked in one process (``--seeds``) against the same seeds run one after another.

    python bench/bench_seeds.py [--ks 1 2 4 8 16] [--repeats 5] [--methods ke dsd] [--full]

Per method and K: one epoch of K stacked replicas (``StackedGenerations.train_epoch``) against K
single-seed epochs (``GenerationTrainer.train_epoch`` of K trainers), interleaved within every
repeat, medians; digits-small (100 images, batch 32; DSD in its sparse phase). Memory: the bytes of
the training state (parameters, gradients, momentum, BatchNorm buffers) of the stacked run; the
sequential runs hold the same state (K trainers) and activations for one replica at a time.

``--full`` also times whole runs end to end in this process: ``ke.train`` with ``seeds=[0..K-1]``
against K ``ke.train`` single-seed runs (3 generations x 10 epochs: data, training, evaluation,
checkpoints, plots), alternating, twice.

Prints the CPU, its matrix units, torch and the thread count.
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastsmall.methods import ke  # noqa: E402
from fastsmall.methods.common import Distributed  # noqa: E402
from fastsmall.methods.common.speed import matrix_units  # noqa: E402
from fastsmall.methods.common.stacked_generations import StackedGenerations  # noqa: E402
from fastsmall.methods.dsd.config import Config as DSDConfig  # noqa: E402
from fastsmall.methods.dsd.train import DSDTrainer  # noqa: E402
from fastsmall.methods.ke.config import Config as KEConfig  # noqa: E402
from fastsmall.methods.ke.train import KETrainer  # noqa: E402

METHODS = {"ke": (KEConfig, KETrainer), "dsd": (DSDConfig, DSDTrainer)}


def _config(method, **kw):
    config_cls, _ = METHODS[method]
    return config_cls(quiet=True, out=tempfile.mkdtemp(), epochs=10, warmup_epochs=1, **kw)


def _ready(method, t):
    if method == "dsd":  # the sparse phase: masks, a prune after every step
        t.generation = 2
        t.begin_generation()


def stacked_epoch(method, k):
    _, trainer_cls = METHODS[method]
    run = StackedGenerations(trainer_cls, _config(method, seeds=list(range(k))), Distributed(torch.device("cpu")))
    for t in run.trainers:
        t.start()
        _ready(method, t)
    run.bind()
    return run.train_epoch, run


def sequential_epochs(method, k):
    _, trainer_cls = METHODS[method]
    trainers = []
    for seed in range(k):
        t = trainer_cls(_config(method, seed=seed), Distributed(torch.device("cpu")))
        t.build_model()
        _ready(method, t)
        trainers.append(t)

    def epoch():
        for t in trainers:
            t.train_epoch()
    return epoch


def state_bytes(run) -> int:
    stack = run.stack
    n = sum(p.numel() * p.element_size() for p in stack.params.values()) * 3  # params, grads, momentum
    return n + sum(b.numel() * b.element_size() for b in stack.buffers.values())


def machine() -> str:
    units = {k: v for k, v in matrix_units().items() if v and k != "cuda"}
    return (f"CPU: {platform.processor() or platform.machine()} ({_cpu_name()}); matrix units: {units}; "
            f"torch {torch.__version__}; Python {platform.python_version()}; threads {torch.get_num_threads()}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def bench_epochs(methods, ks, repeats):
    for method in methods:
        print(f"\n## {method.upper()} epoch, K seeds: stacked vs one after another (digits-small)\n")
        print("| K | sequential ms | stacked ms | speed-up | per seed, stacked ms | stacked state MiB |")
        print("|---|---|---|---|---|---|")
        for k in ks:
            seq = sequential_epochs(method, k)
            stacked, run = stacked_epoch(method, k)
            for _ in range(2):
                seq()
                stacked()
            ts, tk = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                seq()
                ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                stacked()
                tk.append(time.perf_counter() - t0)
            s, st = statistics.median(ts) * 1e3, statistics.median(tk) * 1e3
            print(f"| {k} | {s:.1f} | {st:.1f} | {s / st:.2f}x | {st / k:.2f} | {state_bytes(run) / 2 ** 20:.2f} |",
                  flush=True)


def bench_full(ks, rounds=2):
    print("\n## KE whole runs (3 generations x 10 epochs, KELS): ke.train(seeds=[0..K-1]) vs K single runs\n")
    print("| K | sequential s | stacked s | speed-up |")
    print("|---|---|---|---|")
    common = dict(generations=3, epochs=10, warmup_epochs=2, quiet=True)
    for k in ks:
        seq, stk = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for seed in range(k):
                ke.train(ke.Config(out=tempfile.mkdtemp(), seed=seed, **common))
            seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ke.train(ke.Config(out=tempfile.mkdtemp(), seeds=list(range(k)), **common))
            stk.append(time.perf_counter() - t0)
        s, st = min(seq), min(stk)
        print(f"| {k} | {s:.1f} | {st:.1f} | {s / st:.2f}x |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["ke", "dsd"], choices=list(METHODS))
    ap.add_argument("--full", action="store_true", help="also whole KE runs end to end")
    args = ap.parse_args()
    print(machine())
    bench_epochs(args.methods, args.ks, args.repeats)
    if args.full:
        bench_full([k for k in args.ks if k > 1])


if __name__ == "__main__":
    main()
