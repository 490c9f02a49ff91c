"""PoseAug's seeds one after another in one process, against the same seeds split over processes.

    python bench/bench_seed_processes.py [--seeds 0 1] [--procs 2] [--repeats 3] [--estimator-width 1024]

``fastsmall poseaug --seeds S ...`` trains its seeds one after another in one process, every GEMM on
all the cores' threads (stacking them with vmap is slower here: bench/RESULTS.md, "PoseAug: why its
`--seeds` runs one after another"). Under ``torchrun --nproc-per-node P`` each process takes
``seeds[rank::P]`` and trains them alone on cores / P threads. A GEMM of PoseAug's size gains far
less than 2x from a second thread on a small CPU, so P processes of one thread may finish the same
seeds sooner. Both commands are timed whole (start-up, data, stage 0, PoseAug epochs, evaluation,
checkpoints, the aggregate), alternating, and each writes ``summary.json`` with every seed (checked).

The two do not give the same bits: a float32 GEMM's result depends on the thread count. Each mode is
deterministic for its own thread count (a run repeated in the same mode gives the same metrics).

Prints the CPU, its matrix units, torch and the thread counts.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_seeds import machine  # noqa: E402


def poseaug_args(seeds, width, out):
    # a small run: 2,048 generated poses, 2 stage-0 epochs, 2 PoseAug epochs of 32 G iterations
    return ["--data", "synthetic", "--train-size", "2048", "--test-size", "1024", "--batch-size", "256",
            "--baseline-epochs", "2", "--epochs", "2", "--gan-iters-per-epoch", "32", "--warmup-iters", "32",
            "--estimator", "simple_baseline", "--estimator-width", str(width), "--quiet", "--no-tensorboard",
            "--seeds", *map(str, seeds), "--out", str(out)]


def command(mode, procs, seeds, width, out):
    """(argv, environment) of one whole run."""
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    if mode == "sequential":
        env["OMP_NUM_THREADS"] = str(cores)
        argv = [sys.executable, "-m", "fastsmall.methods.poseaug"]
    else:
        env["OMP_NUM_THREADS"] = str(max(cores // procs, 1))
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                "-m", "fastsmall.methods.poseaug"]
    return argv + poseaug_args(seeds, width, out), env


def timed_run(mode, procs, seeds, width) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv, env = command(mode, procs, seeds, width, out)
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{mode} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        if summary.get("seeds") != list(seeds):
            raise SystemExit(f"{mode} run: summary.json has seeds {summary.get('seeds')}, expected {list(seeds)}")
        return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--estimator-width", type=int, default=1024)
    args = ap.parse_args()
    if args.procs < 2 or args.procs > len(args.seeds):
        raise SystemExit(f"--procs must be 2 .. the number of seeds ({len(args.seeds)}), got {args.procs}")
    cores = os.cpu_count() or 1
    print(f"{machine()}; sequential: 1 process x {cores} threads; split: {args.procs} processes x "
          f"{max(cores // args.procs, 1)} thread(s); seeds {args.seeds}, SimpleBaseline width "
          f"{args.estimator_width}")
    times = {"sequential": [], "split": []}
    for r in range(args.repeats):
        for mode in (("sequential", "split") if r % 2 == 0 else ("split", "sequential")):
            times[mode].append(timed_run(mode, args.procs, args.seeds, args.estimator_width))
        print(f"repeat {r + 1}/{args.repeats}: sequential {times['sequential'][-1]:.1f} s, "
              f"split {times['split'][-1]:.1f} s", flush=True)
    seq, split = statistics.median(times["sequential"]), statistics.median(times["split"])
    print("| seeds | width | sequential s | split over processes s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| {len(args.seeds)} | {args.estimator_width} | {seq:.1f} | {split:.1f} | {seq / split:.2f}x |")


if __name__ == "__main__":
    main()
