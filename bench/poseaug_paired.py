"""PoseAug G+D iteration, ``--impl official`` and ``--impl fused`` timed alternately (paired).

    python bench/poseaug_paired.py [--rounds 15]

pytest-benchmark times one case after the other, so on a shared machine a drift in CPU
speed between the two cases shows up in their ratio (±20 % between runs here). Timing the
two implementations alternately, round by round, and taking the median of the per-round
ratios cancels that drift; ``bench_poseaug_step.py`` remains the source of the absolute times.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from fastsmall.methods.poseaug.config import Config
from fastsmall.methods.poseaug.data import synthetic
from fastsmall.methods.poseaug.estimators import build_estimator
from fastsmall.methods.poseaug.gan import AugmentationGAN

ESTIMATORS = {"tiny": ("simple_baseline", dict(linear_size=8)), "simple_baseline": ("simple_baseline", {}),
              "videopose": ("videopose", {})}


def iteration_fn(impl: str, estimator: str, poses):
    torch.manual_seed(0)
    gan = AugmentationGAN(Config(impl=impl), poses.skeleton, torch.device("cpu"))
    name, kwargs = ESTIMATORS[estimator]
    model = build_estimator(name, poses.skeleton, impl=impl, **kwargs).train()

    def iteration():
        out, rt_2d, _ = gan.generator_step(poses.poses_3d, poses.cams, model, epoch=5)
        gan.discriminator_step(poses.poses_3d, poses.poses_2d, out["pose_ba"], rt_2d)

    return iteration


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    poses = synthetic.generate(args.batch, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} rounds")
    print(f"{'estimator':<17}{'official':>11}{'fused':>9}{'ratio (median, IQR)':>26}")
    for estimator in ESTIMATORS:
        fns = {impl: iteration_fn(impl, estimator, poses) for impl in ("official", "fused")}
        for fn in fns.values():
            for _ in range(3):
                fn()
        times = {impl: [] for impl in fns}
        for _ in range(args.rounds):
            for impl, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[impl].append(time.perf_counter() - start)
        ratios = [r / f for r, f in zip(times["official"], times["fused"])]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"{estimator:<17}{statistics.median(times['official']) * 1e3:>9.0f}ms"
              f"{statistics.median(times['fused']) * 1e3:>7.0f}ms{statistics.median(ratios):>12.2f}x ({q1:.2f}-{q3:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
