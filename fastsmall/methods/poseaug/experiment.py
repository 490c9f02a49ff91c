"""The documented PoseAug experiment: narrow training poses, with and without PoseAug,
evaluated on broader poses and on real CMU motion capture.

    python -m fastsmall.methods.poseaug.experiment --out runs/poseaug-experiment --doc docs/poseaug_narrow_to_broad.md

Per seed: stage 0 (``poseaug-baseline``) trains the estimator on the narrow synthetic set
(standing / walking, facing the camera); then, from the same weights, (a) ``no-augment``
continues on real data only and (b) PoseAug trains the augmentor and the estimator with the
released loop. Both see exactly the same real-data passes; PoseAug adds the augmented ones.
Every condition is evaluated on held-out narrow poses (in distribution), broad poses
(all motion types, any orientation) and CMU subject 01 (real motion, generated cameras).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ..common import mean_std, write_report
from .config import Config
from .train import train

CONDITIONS = {"no-augment": dict(augment=False), "poseaug": dict(augment=True)}
METRICS = (("mpjpe", "MPJPE (mm) ↓"), ("p_mpjpe", "P-MPJPE (mm) ↓"), ("pck", "PCK@150 (%) ↑"), ("auc", "AUC (%) ↑"))


def run(out: Path, seeds: list[int], base: Config) -> dict:
    results = {}
    for seed in seeds:
        stage0 = dataclasses.replace(base, seed=seed, out=str(out / f"stage0-seed{seed}"), augment=False,
                                     quiet=True, resume=True)
        start = time.perf_counter()
        results[("stage0", seed)] = train(stage0, stage0_only=True)
        weights = str(Path(stage0.out) / "checkpoints" / "estimator.pt")
        print(f"[experiment] stage 0 seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        for name, changes in CONDITIONS.items():
            cfg = dataclasses.replace(base, seed=seed, out=str(out / f"{name}-seed{seed}"), pretrained=weights,
                                      quiet=True, resume=True, **changes)
            start = time.perf_counter()
            summary = train(cfg)
            summary["seconds"] = time.perf_counter() - start
            results[(name, seed)] = summary
            first = next(iter(summary["last"]))
            print(f"[experiment] {name} seed {seed}: {first} MPJPE {summary['last'][first]['mpjpe']:.1f} mm "
                  f"({summary['seconds']:.0f} s)", flush=True)
    return results


def report(results: dict, seeds: list[int], base: Config, command: str, elapsed: float) -> str:
    sets = list(results[("poseaug", seeds[0])]["last"])
    lines = [
        "# PoseAug: narrow training poses → broad poses and real motion", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min on this machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}).", "",
        f"Training data: {base.train_size} generated poses, subset `{base.subset}`. Estimator: {base.estimator}"
        + (f" (width {base.estimator_width})" if base.estimator_width else "") +
        f". Stage 0: {base.baseline_epochs} epochs on real data (lr {base.lr_p:g}); then {base.epochs} epochs with "
        f"warm-up {base.warmup}, batch {base.batch_size}, estimator lr {base.lr_p_poseaug:g}, released loss weights "
        f"and feedback. Seeds: {seeds}; mean ± std over seeds of the **last** epoch (no best-on-test pick).", "",
        "Evaluation sets: " + ", ".join(f"`{s}`" for s in sets) + ". `synthetic-broad` has all six motion types "
        "(sitting, crouching, reaching and bending as well), any orientation to the camera and tilts; `bvh` is "
        "CMU subject 01 (every 4th frame of the BVH files), mapped to h36m16 and seen through random cameras "
        "4-6 m away.", "",
    ]
    for metric, label in METRICS:
        lines += [f"## {label}", "", "| condition | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        before = [results[("poseaug", s)]["initial"] for s in seeds]
        lines.append("| stage 0 only | " + " | ".join(mean_std([b[n][metric] for b in before], 1) for n in sets) + " |")
        for name in CONDITIONS:
            lines.append(f"| {name} | " + " | ".join(
                mean_std([results[(name, s)]["last"][n][metric] for s in seeds], 1) for n in sets) + " |")
        lines.append("")
    lines += ["## MPJPE per seed (last epoch)", "", "| condition | seed | " + " | ".join(sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for name in CONDITIONS:
        for s in seeds:
            lines.append(f"| {name} | {s} | " + " | ".join(f"{results[(name, s)]['last'][n]['mpjpe']:.1f}"
                                                           for n in sets) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, seeds: list[int], path: Path) -> None:
    """MPJPE and P-MPJPE per evaluation set and condition (mean over seeds, seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results[("poseaug", seeds[0])]["last"])
    rows = [("stage 0 only", lambda s: results[("poseaug", s)]["initial"])] + [
        (name, lambda s, name=name: results[(name, s)]["last"]) for name in CONDITIONS]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(rows)
    for ax, metric in zip(axes, ("mpjpe", "p_mpjpe")):
        for i, (label, get) in enumerate(rows):
            x = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(sets))]
            values = [[get(s)[n][metric] for s in seeds] for n in sets]
            ax.bar(x, [statistics.mean(v) for v in values], width, label=label)
            for xi, v in zip(x, values):
                ax.scatter([xi] * len(v), v, color="k", s=6, zorder=3)
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(sets)
        ax.set_ylabel(("MPJPE" if metric == "mpjpe" else "P-MPJPE") + " (mm, lower is better)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("trained on narrow poses; evaluated in and out of distribution (last epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/poseaug-experiment")
    parser.add_argument("--doc", default="docs/poseaug_narrow_to_broad.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cmu", default="../shared/data/cmu", help="folder of CMU BVH files for evaluation")
    parser.add_argument("--train-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--baseline-epochs", type=int, default=20)
    parser.add_argument("--estimator", default="simple_baseline")
    parser.add_argument("--estimator-width", type=int, default=None)
    args = parser.parse_args(argv)
    evals = ["synthetic-broad"] + ([f"bvh:{args.cmu}"] if Path(args.cmu).exists() else [])
    base = Config(data="synthetic", subset="narrow", train_size=args.train_size, batch_size=args.batch_size,
                  test_size=4096, epochs=args.epochs,
                  baseline_epochs=args.baseline_epochs, estimator=args.estimator,
                  estimator_width=args.estimator_width, eval=evals, stride=4)
    start = time.perf_counter()
    results = run(Path(args.out), args.seeds, base)
    command = (f"python -m fastsmall.methods.poseaug.experiment --seeds {' '.join(map(str, args.seeds))} "
               f"--train-size {args.train_size} --batch-size {args.batch_size} --epochs {args.epochs} "
               f"--baseline-epochs {args.baseline_epochs} "
               f"--estimator {args.estimator}" + (f" --estimator-width {args.estimator_width}"
                                                  if args.estimator_width else ""))
    text = report(results, args.seeds, base, command, time.perf_counter() - start)
    figure = Path(args.doc).with_suffix(".png")
    plot(results, args.seeds, figure)
    text += f"\n![MPJPE and P-MPJPE by condition]({figure.name})\n"
    write_report(args.doc, text)
    (Path(args.out) / "results.json").write_text(json.dumps({f"{k[0]}-seed{k[1]}": v for k, v in results.items()},
                                                            indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
