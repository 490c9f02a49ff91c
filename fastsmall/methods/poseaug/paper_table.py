"""PoseAug's main table on real data: rows are estimators without and with PoseAug, columns are the
2D keypoint sources (detections and ground truth) on each evaluation set, as in the paper.

    python -m fastsmall.methods.poseaug.paper_table --data-dir /data/h36m \\
        --keypoints detectron_ft_h36m cpn_ft_h36m_dbb hr gt --estimators simple_baseline videopose semgcn stgcn \\
        --eval 3dhp:/data/test_3dhp.npz --out runs/paper-table --doc docs/poseaug_h36m.md

For every (estimator, keypoint source) and seed: stage 0 on H36M's training subjects with that
source as the estimator's 2D input (``--keypoints``; the augmentor projects the 3D poses, as
released), then ``no-augment`` (the row "estimator": the same schedule and real passes without the
augmentor) and ``poseaug`` (the row "+ PoseAug") from the same weights -- ``experiment.run``.
Cells: last-epoch MPJPE (mm), mean ± std over seeds, on H36M's test subjects (S9, S11, the same
keypoint source) and on every ``--eval`` set; for 3DHP also PCK@150 and AUC. The paper's rows come
from its released models trained at full budget; this table reproduces the protocol, not the budget.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ..common import mean_std, write_report
from . import experiment
from .config import ESTIMATOR_NAMES, Config

ROWS = (("no-augment", ""), ("poseaug", "+ PoseAug"))


def run_table(out: Path, seeds: list[int], base: Config, keypoints: list[str], estimators: list[str]) -> dict:
    """{(estimator, keypoints): experiment.run's results for the no-augment and poseaug conditions}."""
    results = {}
    for estimator in estimators:
        for source in keypoints:
            cfg = dataclasses.replace(base, estimator=estimator, keypoints=source)
            results[(estimator, source)] = experiment.run(out / f"{estimator}-{source}", seeds, cfg,
                                                          conditions=[name for name, _ in ROWS])
    return results


def _columns(results: dict, seeds: list[int], keypoints: list[str]) -> list[tuple[str, str, str]]:
    """(keypoint source, evaluation set, metric) of every column, in the paper's order."""
    first = next(iter(results.values()))[("poseaug", seeds[0])]["last"]
    cols = []
    for source in keypoints:
        for name in first:
            cols.append((source, name, "mpjpe"))
            if name.startswith("3dhp"):
                cols += [(source, name, "pck"), (source, name, "auc")]
    return cols


def table(results: dict, seeds: list[int], keypoints: list[str], estimators: list[str]) -> str:
    cols = _columns(results, seeds, keypoints)
    unit = {"mpjpe": "MPJPE ↓", "pck": "PCK ↑", "auc": "AUC ↑"}
    lines = ["| method | " + " | ".join(f"{source}: {name} {unit[m]}" for source, name, m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for estimator in estimators:
        for condition, suffix in ROWS:
            cells = [mean_std([results[(estimator, source)][(condition, s)]["last"][name][m] for s in seeds], 1)
                     for source, name, m in cols]
            lines.append(f"| {estimator + (' ' + suffix if suffix else '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict, seeds: list[int], base: Config, keypoints: list[str], estimators: list[str],
           command: str, elapsed: float) -> str:
    return "\n".join([
        "# PoseAug on Human3.6M: estimators ± PoseAug by 2D keypoint source", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min on this machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}).", "",
        f"Stage 0: {base.baseline_epochs} epochs; then {base.epochs} epochs, batch {base.batch_size}, "
        + (f"{base.gan_iters_per_epoch} G iterations per epoch, " if base.gan_iters_per_epoch else "")
        + (f"warm-up {base.warmup_iters} G iterations" if base.warmup_iters is not None else f"warm-up {base.warmup} epochs")
        + f", frame stride {base.stride}. Rows: the estimator continued without the augmentor at the same schedule "
        f"and real passes (`no-augment`), and with PoseAug. Last-epoch numbers, mean ± std over seeds {seeds}; the "
        "paper's numbers come from its released full-budget models.", "",
        table(results, seeds, keypoints, estimators), ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="VideoPose3D's H36M files (data_3d_h36m.npz, "
                                                         "data_2d_h36m_<keypoints>.npz, cameras.json)")
    parser.add_argument("--cameras", default=None)
    parser.add_argument("--keypoints", nargs="+", default=["gt"])
    parser.add_argument("--estimators", nargs="+", default=["simple_baseline"], choices=ESTIMATOR_NAMES)
    parser.add_argument("--estimator-width", type=int, default=None)
    parser.add_argument("--eval", nargs="*", default=[], help="extra evaluation sets, e.g. 3dhp:/data/test_3dhp.npz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--warmup-iters", type=int, default=None)
    parser.add_argument("--gan-iters-per-epoch", type=int, default=None)
    parser.add_argument("--out", default="runs/paper-table")
    parser.add_argument("--doc", default="docs/poseaug_h36m.md")
    args = parser.parse_args(argv)
    base = Config(data="h36m", data_dir=args.data_dir, cameras=args.cameras, eval=args.eval, epochs=args.epochs,
                  baseline_epochs=args.baseline_epochs, batch_size=args.batch_size, stride=args.stride,
                  estimator_width=args.estimator_width, warmup=args.warmup, warmup_iters=args.warmup_iters,
                  gan_iters_per_epoch=args.gan_iters_per_epoch)
    start = time.perf_counter()
    results = run_table(Path(args.out), args.seeds, base, args.keypoints, args.estimators)
    command = "python -m fastsmall.methods.poseaug.paper_table " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report(results, args.seeds, base, args.keypoints, args.estimators, command, time.perf_counter() - start)
    write_report(args.doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
