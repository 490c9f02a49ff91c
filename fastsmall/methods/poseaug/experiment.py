"""The documented PoseAug experiment: narrow training poses, with and without PoseAug,
evaluated on broader poses and on real CMU motion capture.

    python -m fastsmall.methods.poseaug.experiment --out runs/poseaug-experiment [--update-docs]

The report goes to ``out/report.md``; ``--update-docs`` rewrites ``--doc`` instead (its hand-written
"What reproduces" section is kept).

Per seed: stage 0 (``poseaug-baseline``) trains the estimator on the narrow synthetic set
(standing / walking, facing the camera); then, from the same weights, the conditions:
``no-augment`` continues on real data only; ``random-view`` adds poses turned about the vertical
axis and moved to a random real depth (no GAN); ``frozen`` adds the augmentor's output at its random
initialisation (learning rate 0: random augmentation through the same heads); ``poseaug`` trains
the augmentor and the estimator with the released loop. Every condition sees exactly the same
real-data passes (the estimator trains after the same warm-up) and the same seeds. Every condition
is evaluated on held-out narrow poses (in distribution), broad poses (all motion types, any
orientation) and CMU subject 01 (real motion, generated cameras). The report gives last-epoch
numbers, mean ± std over seeds, the per-seed paired differences, and the augmentor diagnostics
(has the augmentor learned?).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from ..common.plotting import integer_xaxis
from ..common.report import machine_description, mean_std, publish, report_path
from ..common.speed import add_precision_argument
from .config import Config
from .train import train

CONDITIONS = {"no-augment": dict(augment=False), "random-view": dict(augmentor="random-view"),
              "frozen": dict(augmentor="frozen"), "poseaug": dict(augmentor="learned")}
# (condition, reference) pairs whose per-seed MPJPE differences the report gives
PAIRS = (("poseaug", "no-augment"), ("poseaug", "frozen"), ("poseaug", "random-view"), ("random-view", "no-augment"),
         ("frozen", "no-augment"))
DIAGNOSTICS = (("aug_kept_fraction", "kept", 3), ("aug_depth_q50", "depth median (m)", 2),
               ("real_depth_q50", "real depth median (m)", 2), ("aug_yaw_change_q50", "yaw change median (°)", 0),
               ("ba_angle_deg", "bone-angle change (°)", 1), ("d_3d_real_acc", "3D D real acc", 2),
               ("d_3d_fake_acc", "3D D fake acc", 2), ("d_2d_real_acc", "2D D real acc", 2),
               ("d_2d_fake_acc", "2D D fake acc", 2))
METRICS = (("mpjpe", "MPJPE (mm) ↓"), ("p_mpjpe", "P-MPJPE (mm) ↓"), ("pck", "PCK@150 (%) ↑"), ("auc", "AUC (%) ↑"))


def run(out: Path, seeds: list[int], base: Config, conditions=tuple(CONDITIONS)) -> dict:
    results = {}
    for seed in seeds:
        stage0 = dataclasses.replace(base, seed=seed, out=str(out / f"stage0-seed{seed}"), augment=False,
                                     quiet=True, resume=True)
        start = time.perf_counter()
        results[("stage0", seed)] = train(stage0, stage0_only=True)
        weights = str(Path(stage0.out) / "checkpoints" / "estimator.pt")
        print(f"[experiment] stage 0 seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        for name in conditions:
            cfg = dataclasses.replace(base, seed=seed, out=str(out / f"{name}-seed{seed}"), pretrained=weights,
                                      quiet=True, resume=True, **CONDITIONS[name])
            start = time.perf_counter()
            summary = train(cfg)
            summary["seconds"] = time.perf_counter() - start
            summary["records"] = [json.loads(line) for line in
                                  (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
            results[(name, seed)] = summary
            first = next(iter(summary["last"]))
            print(f"[experiment] {name} seed {seed}: {first} MPJPE {summary['last'][first]['mpjpe']:.1f} mm "
                  f"({summary['seconds']:.0f} s)", flush=True)
    return results


def run_seconds(out: Path, seeds: list[int], conditions) -> float:
    """Seconds the experiment's runs spent, summed from their metrics (every epoch, stage 0 included)."""
    total = 0.0
    for seed in seeds:
        for name in ["stage0", *conditions]:
            path = out / f"{name}-seed{seed}" / "metrics.jsonl"
            if path.is_file():
                total += sum(json.loads(line).get("seconds", 0.0) for line in path.read_text().splitlines())
    return total


def _conditions(results) -> list[str]:
    return [c for c in CONDITIONS if any(k[0] == c for k in results)]


def _last_epoch(summary: dict) -> dict:
    return [r for r in summary["records"] if r["type"] == "epoch"][-1]


def _first_use_epoch(summary: dict) -> dict | None:
    """The record of the first epoch whose augmented poses the estimator trains on (the end of the
    warm-up): what the augmentor had learned when the estimator started to use it."""
    return next((r for r in summary["records"] if r["type"] == "epoch" and "estimator_loss_augmented" in r), None)


def _diagnostics_table(results: dict, seeds: list[int], conditions: list[str], pick) -> list[str]:
    lines = ["| condition | " + " | ".join(label for _, label, _ in DIAGNOSTICS) + " |",
             "|---|" + "---|" * len(DIAGNOSTICS)]
    for name in conditions:
        records = [pick(results[(name, s)]) for s in seeds]
        cells = []
        for key, _, digits in DIAGNOSTICS:
            values = [None if r is None else r.get(key) for r in records]
            cells.append("–" if any(v is None for v in values) else mean_std(values, digits))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _per_seed_diagnostics(results: dict, seeds: list[int]) -> list[str]:
    """The learned augmentor of every seed, at first use and at the end: has *each* one trained?"""
    keys = (("aug_kept_fraction", "kept", 2), ("aug_depth_q50", "depth median (m)", 2),
            ("aug_yaw_change_q50", "yaw change (°)", 0), ("ba_angle_deg", "bone-angle change (°)", 1))
    lines = ["| seed | " + " | ".join(f"{label}, first use" for _, label, _ in keys) + " | "
             + " | ".join(f"{label}, last" for _, label, _ in keys) + " |",
             "|---|" + "---|" * (2 * len(keys))]
    for s in seeds:
        summary = results[("poseaug", s)]
        cells = []
        for record in (_first_use_epoch(summary), _last_epoch(summary)):
            cells += ["–" if record is None or record.get(k) is None else f"{record[k]:.{d}f}" for k, _, d in keys]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(results: dict, seeds: list[int], base: Config, command: str, elapsed: float) -> str:
    conditions = _conditions(results)
    sets = list(results[(conditions[0], seeds[0])]["last"])
    budget = (f"{base.gan_iters_per_epoch} G iterations" if base.gan_iters_per_epoch else
              f"{base.gan_passes} pass(es) of G iterations") + " per epoch"
    warm = (f"{base.warmup_iters} G iterations" if base.warmup_iters is not None else f"{base.warmup} epochs")
    lines = [
        "# PoseAug: narrow training poses → broad poses and real motion", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min of training and evaluation on {machine_description()}; "
        "an interrupted run resumes where it stopped).", "",
        f"Training data: {base.train_size} generated poses, subset `{base.subset}`. Estimator: {base.estimator}"
        + (f" (width {base.estimator_width})" if base.estimator_width else "") +
        f". Stage 0: {base.baseline_epochs} epochs on real data (lr {base.lr_p:g}); then {base.epochs} epochs, "
        f"{budget}, warm-up {warm} (the feedback loss and the estimator's training start after it, in every "
        f"condition), batch {base.batch_size}, estimator lr {base.lr_p_poseaug:g}, released loss weights "
        f"and feedback. Seeds: {seeds}; mean ± std over seeds of the **last** epoch (no best-on-test pick). "
        "Conditions: " + ", ".join(f"`{c}`" for c in conditions) + " (see the experiment's docstring).", "",
        "Evaluation sets: " + ", ".join(f"`{s}`" for s in sets) + ". `synthetic-broad` has all six motion types "
        "(sitting, crouching, reaching and bending as well), any orientation to the camera and tilts; `bvh` is "
        "CMU subject 01 (every 4th frame of the BVH files), mapped to h36m16 and seen through random cameras "
        "4-6 m away.", "",
    ]
    for metric, label in METRICS:
        lines += [f"## {label}", "", "| condition | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        before = [results[(conditions[0], s)]["initial"] for s in seeds]
        lines.append("| stage 0 only | " + " | ".join(mean_std([b[n][metric] for b in before], 1) for n in sets) + " |")
        for name in conditions:
            lines.append(f"| {name} | " + " | ".join(
                mean_std([results[(name, s)]["last"][n][metric] for s in seeds], 1) for n in sets) + " |")
        lines.append("")
    pairs = [(a, b) for a, b in PAIRS if a in conditions and b in conditions]
    if pairs:
        lines += ["## Paired MPJPE differences (mm, last epoch; negative: the first condition is better)", "",
                  "Per seed, condition minus reference on the same seed (same stage-0 weights, same real passes); "
                  "mean ± std over seeds, then the per-seed values.", "",
                  "| condition − reference | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for a, b in pairs:
            cells = []
            for n in sets:
                d = [results[(a, s)]["last"][n]["mpjpe"] - results[(b, s)]["last"][n]["mpjpe"] for s in seeds]
                cells.append(f"{mean_std(d, 1)} ({', '.join(f'{v:+.1f}' for v in d)})")
            lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
        lines.append("")
    augmenting = [c for c in conditions if c != "no-augment"]
    if augmenting:
        lines += ["## Augmentor diagnostics (last epoch: has the augmentor learned?)", "",
                  "Over the augmented poses of the last epoch's last pass (`poseaug/diagnostics.py`): the share the "
                  "image filter keeps, the root depth of the augmented poses against the real ones', the change of "
                  "heading, the mean bone-angle change and the discriminators' accuracies; mean ± std over seeds.", ""]
        lines += _diagnostics_table(results, seeds, augmenting, _last_epoch)
        first = _first_use_epoch(results[(augmenting[0], seeds[0])])
        if first is not None:
            lines += [f"At the end of the warm-up (epoch {first['epoch']}, the first whose augmented poses the "
                      "estimator trains on): what the augmentor had learned when the estimator started to use it.",
                      ""]
            lines += _diagnostics_table(results, seeds, augmenting, _first_use_epoch)
        if "poseaug" in conditions:
            lines += ["Learned augmentor, per seed (first use / last epoch):", ""]
            lines += _per_seed_diagnostics(results, seeds)
    lines += ["## MPJPE per seed (last epoch)", "", "| condition | seed | " + " | ".join(sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for name in conditions:
        for s in seeds:
            lines.append(f"| {name} | {s} | " + " | ".join(f"{results[(name, s)]['last'][n]['mpjpe']:.1f}"
                                                           for n in sets) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, seeds: list[int], path: Path) -> None:
    """MPJPE and P-MPJPE per evaluation set and condition (mean over seeds, seeds as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = _conditions(results)
    sets = list(results[(conditions[0], seeds[0])]["last"])
    rows = [("stage 0 only", lambda s: results[(conditions[0], s)]["initial"])] + [
        (name, lambda s, name=name: results[(name, s)]["last"]) for name in conditions]
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


TRAJECTORIES = (("aug_kept_fraction", "kept by the image filter", None),
                ("aug_depth_q50", "root depth median (m)", "real_depth_q50"),
                ("aug_yaw_change_q50", "yaw change median (°)", None),
                ("d_2d_fake_acc", "2D discriminator accuracy on fakes", None))


def plot_diagnostics(results: dict, seeds: list[int], path: Path) -> None:
    """The augmentor diagnostics per PoseAug epoch, one line per seed, learned against frozen (and
    random-view where it has the statistic): did the augmentor move toward the real data?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [c for c in _conditions(results) if c != "no-augment"]
    colours = dict(zip(conditions, ("tab:green", "tab:orange", "tab:blue")))
    fig, axes = plt.subplots(1, len(TRAJECTORIES), figsize=(4.2 * len(TRAJECTORIES), 3.6))
    first_use = _first_use_epoch(results[(conditions[0], seeds[0])]) if conditions else None
    for ax, (key, label, reference) in zip(axes, TRAJECTORIES):
        if first_use is not None:  # the first epoch whose augmented poses the estimator trains on
            ax.axvline(first_use["epoch"], color="0.5", ls=":", lw=1,
                       label="estimator's first use" if ax is axes[0] else None)
        for name in conditions:
            for i, s in enumerate(seeds):
                epochs = [r for r in results[(name, s)]["records"] if r["type"] == "epoch" and r.get(key) is not None]
                ax.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], color=colours.get(name, "k"),
                        alpha=0.7, label=name if i == 0 and epochs else None)
        if reference:
            real = [_last_epoch(results[(conditions[0], s)]).get(reference) for s in seeds]
            if all(v is not None for v in real):
                ax.axhline(statistics.mean(real), color="k", ls="--", label="real poses")
        ax.set_xlabel("PoseAug epoch")
        integer_xaxis(ax)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("has the augmentor learned? per epoch, one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/poseaug-experiment")
    parser.add_argument("--doc", default="docs/poseaug_narrow_to_broad.md")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite --doc (its tables and figures); without it the report goes to OUT/report.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cmu", default="../shared/data/cmu", help="folder of CMU BVH files for evaluation")
    parser.add_argument("--train-size", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--baseline-epochs", type=int, default=20)
    parser.add_argument("--estimator", default="simple_baseline")
    parser.add_argument("--estimator-width", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up epochs (without --warmup-iters)")
    parser.add_argument("--warmup-iters", type=int, default=None, help="warm-up in G iterations")
    parser.add_argument("--gan-iters-per-epoch", type=int, default=None, help="G iterations per epoch")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    add_precision_argument(parser)
    args = parser.parse_args(argv)
    evals = ["synthetic-broad"] + ([f"bvh:{args.cmu}"] if Path(args.cmu).exists() else [])
    base = Config(data="synthetic", subset="narrow", train_size=args.train_size, batch_size=args.batch_size,
                  test_size=4096, epochs=args.epochs,
                  baseline_epochs=args.baseline_epochs, estimator=args.estimator,
                  estimator_width=args.estimator_width, eval=evals, stride=4, warmup=args.warmup,
                  warmup_iters=args.warmup_iters, gan_iters_per_epoch=args.gan_iters_per_epoch,
                  precision=args.precision)
    start = time.perf_counter()
    results = run(Path(args.out), args.seeds, base, args.conditions)
    command = (f"python -m fastsmall.methods.poseaug.experiment --seeds {' '.join(map(str, args.seeds))} "
               f"--train-size {args.train_size} --batch-size {args.batch_size} --epochs {args.epochs} "
               f"--baseline-epochs {args.baseline_epochs} "
               f"--estimator {args.estimator}" + (f" --estimator-width {args.estimator_width}"
                                                  if args.estimator_width else "")
               + f" --warmup {args.warmup}"
               + (f" --warmup-iters {args.warmup_iters}" if args.warmup_iters is not None else "")
               + (f" --gan-iters-per-epoch {args.gan_iters_per_epoch}" if args.gan_iters_per_epoch else "")
               + (f" --conditions {' '.join(args.conditions)}" if args.conditions != list(CONDITIONS) else "")
               + (f" --precision {args.precision}" if args.precision != "fp32" else "")
               + (f" --out {args.out}" if args.out != parser.get_default("out") else "")
               + (f" --doc {args.doc}" if args.doc != parser.get_default("doc") else "")
               + (" --update-docs" if args.update_docs else ""))
    # the runs' own epoch times (a resumed experiment's wall time would leave out what earlier calls did)
    elapsed = max(time.perf_counter() - start, run_seconds(Path(args.out), args.seeds, args.conditions))
    text = report(results, args.seeds, base, command, elapsed)
    target = report_path(args.out, args.doc, args.update_docs)
    figure = target.with_suffix(".png")
    plot(results, args.seeds, figure)
    text += f"\n![MPJPE and P-MPJPE by condition]({figure.name})\n"
    diagnostics_figure = figure.with_name(figure.stem + "_diagnostics.png")
    plot_diagnostics(results, args.seeds, diagnostics_figure)
    text += f"\n![augmentor diagnostics per epoch]({diagnostics_figure.name})\n"
    publish(args.out, args.doc, args.update_docs, text)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {f"{k[0]}-seed{k[1]}": {key: v for key, v in summary.items() if key != "records"}
         for k, summary in results.items()}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
