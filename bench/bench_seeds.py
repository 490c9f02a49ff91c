"""Many seeds stacked in one process (``--seeds``) against the same seeds run one after another.

    python bench/bench_seeds.py [--ks 1 2 4 8 16] [--repeats 5] [--methods ke dsd crest] [--full]

Per method and K: one epoch of K stacked replicas (``StackedGenerations.train_epoch``,
``StackedCReST.train_epoch``) against K single-seed epochs (the trainers' own epoch, one trainer
after another), interleaved within every repeat, medians. KE / DSD: digits-small (100 images, batch
32; DSD in its sparse phase); CReST+: digits-LT, 32 steps of 32 labelled + 2 x 224 unlabelled images
(no evaluation). Memory: the bytes of the training state (parameters, gradients, momentum, BatchNorm
buffers; CReST: + the EMA) of the stacked run; the sequential runs hold the same state (K trainers)
and activations for one replica at a time.

``--methods poseaug``: whether stacking PoseAug's estimator would pay (``bench_poseaug_stacking``).

``--full`` also times whole runs end to end in this process, for each method of ``--methods``
that has one (KE: 3 generations x 10 epochs; CReST+: 3 generations x 4 epochs): ``train`` with
``seeds=[0..K-1]`` against K single-seed ``train`` runs (data, training, evaluation, pseudo-labels,
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

from fastsmall.methods import crest, ke  # noqa: E402
from fastsmall.methods.common import Distributed  # noqa: E402
from fastsmall.methods.common.speed import matrix_units  # noqa: E402
from fastsmall.methods.common.stacked_generations import StackedGenerations  # noqa: E402
from fastsmall.methods.crest.config import Config as CReSTConfig  # noqa: E402
from fastsmall.methods.crest.stacked import StackedCReST  # noqa: E402
from fastsmall.methods.crest.train import CReSTTrainer  # noqa: E402
from fastsmall.methods.dsd.config import Config as DSDConfig  # noqa: E402
from fastsmall.methods.dsd.train import DSDTrainer  # noqa: E402
from fastsmall.methods.ke.config import Config as KEConfig  # noqa: E402
from fastsmall.methods.ke.train import KETrainer  # noqa: E402

# method: (config, trainer, stacked run, the single-seed trainer's epoch)
METHODS = {"ke": (KEConfig, KETrainer, StackedGenerations, "train_epoch"),
           "dsd": (DSDConfig, DSDTrainer, StackedGenerations, "train_epoch"),
           "crest": (CReSTConfig, CReSTTrainer, StackedCReST, "_train_epoch")}


DATA = {"ke": "digits-small", "dsd": "digits-small, sparse phase", "crest": "CReST+, digits-LT"}


def _config(method, **kw):
    config_cls = METHODS[method][0]
    if method == "crest":
        return config_cls(quiet=True, out=tempfile.mkdtemp(), plus=True, **kw)
    return config_cls(quiet=True, out=tempfile.mkdtemp(), epochs=10, warmup_epochs=1, **kw)


def _ready(method, t):
    if method == "dsd":  # the sparse phase: masks, a prune after every step
        t.generation = 2
        t.begin_generation()


def stacked_epoch(method, k):
    _, trainer_cls, stacked_cls, _ = METHODS[method]
    run = stacked_cls(trainer_cls, _config(method, seeds=list(range(k))), Distributed(torch.device("cpu")))
    for t in run.trainers:
        t.start()
        _ready(method, t)
    run.bind()
    return run.train_epoch, run


def sequential_epochs(method, k):
    _, trainer_cls, _, epoch_name = METHODS[method]
    trainers = []
    for seed in range(k):
        t = trainer_cls(_config(method, seed=seed), Distributed(torch.device("cpu")))
        t.start() if method == "crest" else t.build_model()
        _ready(method, t)
        trainers.append(t)

    def epoch():
        for t in trainers:
            getattr(t, epoch_name)()
    return epoch


def state_bytes(run) -> int:
    tensors = list(run.stack.params.values()) * 3  # params, grads, momentum
    tensors += list(run.stack.buffers.values())
    if hasattr(run, "ema_stack"):
        tensors += list(run.ema_stack.params.values()) + list(run.ema_stack.buffers.values())
    return sum(t.numel() * t.element_size() for t in tensors)


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
        print(f"\n## {method.upper()} epoch, K seeds: stacked vs one after another ({DATA[method]})\n")
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


FULL_RUNS = {  # method: (what, train, config, its settings)
    "ke": ("KE whole runs (3 generations x 10 epochs, KELS)", ke.train, ke.Config,
           dict(generations=3, epochs=10, warmup_epochs=2)),
    "crest": ("CReST+ whole runs (3 generations x 4 epochs x 32 steps)", crest.train, crest.Config,
              dict(generations=3, epochs=4, plus=True)),
}


def bench_full(methods, ks, rounds=2):
    for method in [m for m in methods if m in FULL_RUNS]:
        what, train, config_cls, common = FULL_RUNS[method]
        print(f"\n## {what}: train(seeds=[0..K-1]) vs K single runs\n")
        print("| K | sequential s | stacked s | speed-up |")
        print("|---|---|---|---|")
        for k in ks:
            seq, stk = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for seed in range(k):
                    train(config_cls(out=tempfile.mkdtemp(), seed=seed, quiet=True, **common))
                seq.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                train(config_cls(out=tempfile.mkdtemp(), seeds=list(range(k)), quiet=True, **common))
                stk.append(time.perf_counter() - t0)
            s, st = min(seq), min(stk)
            print(f"| {k} | {s:.1f} | {st:.1f} | {s / st:.2f}x |", flush=True)


def bench_poseaug_stacking(ks, repeats, widths=(1024, 256), batch=1024):
    """Would stacking pay for PoseAug? Its estimator's forward + backward at the released batch,
    K replicas ``vmap``-ed over stacked parameters (torch.func, as ``replicas.ReplicaStack`` does;
    ``randomness="different"`` for the dropout) against K separate calls, interleaved. PoseAug's
    ``--seeds`` runs the seeds one after another because the stacked step is the slower one here."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from fastsmall.methods.poseaug.estimators import build_estimator
    print(f"\n## PoseAug: SimpleBaseline forward + backward, batch {batch}, K replicas stacked (vmap) vs one "
          "after another\n")
    print("| width | K | sequential ms | stacked ms | stacked speed-up |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    for width in widths:
        for k in [k for k in ks if k > 1]:
            # impl="official": plain aten layers, which all have vmap batching rules -- stacking's best
            # case (fastsmall's fused bn_act_dropout has none: vmap would loop over the replicas)
            models = [build_estimator("simple_baseline", linear_size=width, impl="official") for _ in range(k)]
            joints = models[0].num_joints
            x, y = torch.randn(k, batch, joints, 2), torch.randn(k, batch, joints, 3)
            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")
            stacked_forward = vmap(lambda p, b, xx: functional_call(base, (p, b), (xx,)), randomness="different")

            def stacked():
                loss = ((stacked_forward(params, buffers, x) - y) ** 2).mean() * k  # each replica's own mean
                torch.autograd.grad(loss, list(params.values()))

            def sequential():
                for i, m in enumerate(models):
                    torch.autograd.grad(((m(x[i]) - y[i]) ** 2).mean(), list(m.parameters()))

            ts, tk = [], []
            for r in range(repeats + 1):
                t0 = time.perf_counter()
                sequential()
                t1 = time.perf_counter()
                stacked()
                t2 = time.perf_counter()
                if r:  # the first round warms up
                    ts.append(t1 - t0)
                    tk.append(t2 - t1)
            s, st = statistics.median(ts) * 1e3, statistics.median(tk) * 1e3
            print(f"| {width} | {k} | {s:.1f} | {st:.1f} | {s / st:.2f}x |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["ke", "dsd"], choices=list(METHODS) + ["poseaug"],
                    help="poseaug: whether stacking its estimator would pay (its --seeds runs one after another)")
    ap.add_argument("--full", action="store_true", help="also whole runs end to end (KE, CReST+)")
    args = ap.parse_args()
    print(machine())
    bench_epochs([m for m in args.methods if m in METHODS], args.ks, args.repeats)
    if "poseaug" in args.methods:
        bench_poseaug_stacking(args.ks, args.repeats)
    if args.full:
        bench_full(args.methods, [k for k in args.ks if k > 1])


if __name__ == "__main__":
    main()
