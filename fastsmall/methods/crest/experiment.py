"""The documented digits-LT experiment: FixMatch vs CReST vs CReST+ over several seeds.

    python -m fastsmall.methods.crest.experiment --out runs/crest-experiment --doc docs/crest_digits_lt.md

Writes one run directory per (method, seed) -- with ``--stacked`` one per method, its seeds trained
stacked in one process (``--seeds``: out/<method>-seeds/seed-S/) -- then a Markdown report with balanced
accuracy and the mean recall of the 3 rarest classes per generation (mean +- std over
seeds), and FixMatch's per-class precision vs recall by class rank (the paper's
observation: minority classes have high precision but low recall).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from ..common import mean_std, write_report
from .config import Config
from .train import train

METHODS = {"fixmatch": dict(baseline="fixmatch"), "crest": dict(), "crest+": dict(plus=True)}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run(out: Path, seeds: list[int], base: Config, stacked: bool = False) -> dict:
    """{(method, seed): that seed's summary with its metrics records}. ``stacked``: every method's
    seeds trained together in one process (``Config.seeds``; each seed exactly its own run). Not the
    default: a CReST step on digits-LT (480 images) is compute-bound on a CPU, where the stacked step
    measured 0.85-0.94x the separate ones (bench/RESULTS.md, "Many seeds in one process")."""
    results = {}
    for name, changes in METHODS.items():
        if stacked:
            cfg = dataclasses.replace(base, seeds=list(seeds), out=str(out / f"{name}-seeds"), quiet=True,
                                      resume=True, **changes)
            start = time.perf_counter()
            summary = train(cfg)
            seconds = time.perf_counter() - start
            for seed in seeds:
                one = dict(summary["per_seed"][str(seed)], seconds=seconds / len(seeds))
                one["records"] = _records(out / f"{name}-seeds" / f"seed-{seed}")
                results[(name, seed)] = one
            print(f"[experiment] {name}: {len(seeds)} seeds stacked, balanced acc "
                  + " ".join(f"{results[(name, s)]['test_balanced_accuracy']:.3f}" for s in seeds)
                  + f" ({seconds:.0f} s)", flush=True)
            continue
        for seed in seeds:
            # resume=True: an interrupted experiment continues where it stopped
            cfg = dataclasses.replace(base, seed=seed, out=str(out / f"{name}-seed{seed}"), quiet=True, resume=True,
                                      **changes)
            start = time.perf_counter()
            summary = train(cfg)
            summary["seconds"] = time.perf_counter() - start
            summary["records"] = _records(Path(cfg.out))
            results[(name, seed)] = summary
            print(f"[experiment] {name} seed {seed}: balanced acc {summary['test_balanced_accuracy']:.3f} "
                  f"({summary['seconds']:.0f} s)", flush=True)
    return results


def report(results: dict, seeds: list[int], base: Config, command: str, elapsed: float) -> str:
    G = base.generations
    lines = [
        "# CReST on digits-LT: FixMatch vs CReST vs CReST+", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min on this machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}).", "",
        f"Data: digits-LT from scikit-learn's bundled digits, imbalance γ = {base.imbalance:g}, labelled fraction "
        f"β = {base.labeled_fraction:g}, balanced test set of {base.test_per_class} images per class, a random class → "
        f"rank map per seed. Budget per generation: {base.epochs} epochs × {base.steps_per_epoch} steps, batch "
        f"{base.batch_size} labelled + {base.mu}×{base.batch_size} unlabelled. FixMatch gets one generation's budget. "
        f"Seeds: {seeds}. Numbers are the median EMA test metric of the last {base.eval_last} epochs of a "
        "generation (never a best-on-test pick), mean ± std over seeds.", "",
        "## Balanced accuracy / recall of the 3 rarest classes, per generation", "",
        "| method | " + " | ".join(f"gen {g}" for g in range(G)) + " |",
        "|---|" + "---|" * G,
    ]
    for metric, label in (("test_balanced_accuracy", "balanced acc"), ("tail_recall", "tail recall")):
        for name in METHODS:
            row = []
            for g in range(G):
                vals = [s["per_generation"][g][metric] for (n, _), s in results.items()
                        if n == name and g < len(s["per_generation"])]
                row.append(mean_std(vals) if vals else "")
            lines.append(f"| {name} {label} | " + " | ".join(row) + " |")
    lines += ["", "## FixMatch: per-class test precision vs recall, by class rank (1 = most labelled)", "",
              "| rank | precision | recall |", "|---|---|---|"]
    num_classes = len(next(iter(results.values()))["class_rank"])
    for rank in range(1, num_classes + 1):
        prec, rec = [], []
        for (name, _), s in results.items():
            if name != "fixmatch":
                continue
            c = s["class_rank"].index(rank)
            last = [r for r in s["records"] if r["type"] == "generation"][-1]["test"]
            prec.append(last["precision"][c])
            rec.append(last["recall"][c])
        lines.append(f"| {rank} | {mean_std(prec)} | {mean_std(rec)} |")
    lines += ["", "## Final balanced accuracy per seed", "", "| method | " + " | ".join(f"seed {s}" for s in seeds)
              + " |", "|---|" + "---|" * len(seeds)]
    for name in METHODS:
        lines.append(f"| {name} | " + " | ".join(f"{results[(name, s)]['test_balanced_accuracy']:.3f}"
                                                for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/crest-experiment")
    parser.add_argument("--doc", default="docs/crest_digits_lt.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--stacked", action="store_true",
                        help="each method's seeds stacked in one process (same numbers; slower on a CPU, see run())")
    args = parser.parse_args(argv)
    base = Config(generations=args.generations, epochs=args.epochs)
    start = time.perf_counter()
    results = run(Path(args.out), args.seeds, base, stacked=args.stacked)
    command = ("python -m fastsmall.methods.crest.experiment --seeds " + " ".join(map(str, args.seeds))
               + f" --generations {args.generations} --epochs {args.epochs}" + (" --stacked" if args.stacked else ""))
    text = report(results, args.seeds, base, command, time.perf_counter() - start)
    write_report(args.doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
