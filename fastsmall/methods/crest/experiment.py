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

from ..common.report import machine_description, mean_std, paired, publish
from ..common.config import validate_config
from .config import Config
from .pseudo_label import scaled_window
from .train import train

METHODS = {"fixmatch": dict(baseline="fixmatch"), "crest": dict(), "crest+": dict(plus=True)}
#: the Config fields the runner exposes as flags (issue 15: the official protocol's choices)
PROTOCOL = ("da_window", "da_start", "dist_align", "da_momentum", "ema_schedule", "lr_schedule", "unlabelled_stream")
#: and the speed option whose effect on the results the runner can measure (issue 12: bf16 parity)
OPTIONS = PROTOCOL + ("precision",)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train_seconds(records: list[dict]) -> float:
    """The run's own epoch times (a resumed run's wall time would leave out what earlier calls did)."""
    return sum(r.get("seconds", 0.0) for r in records if r["type"] == "epoch")


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
                one = dict(summary["per_seed"][str(seed)])
                one["records"] = _records(out / f"{name}-seeds" / f"seed-{seed}")
                one["seconds"] = _train_seconds(one["records"])
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
            summary["records"] = _records(Path(cfg.out))
            summary["seconds"] = _train_seconds(summary["records"])
            results[(name, seed)] = summary
            print(f"[experiment] {name} seed {seed}: balanced acc {summary['test_balanced_accuracy']:.3f} "
                  f"({summary['seconds']:.0f} s)", flush=True)
    return results


def _tail(summary: dict) -> list[int]:
    """The 3 rarest classes of that seed's labelled set (class indices)."""
    ranks = summary["class_rank"]
    return [c for c, r in enumerate(ranks) if r > len(ranks) - 3]


def _final(results, name, seeds, key):
    return [results[(name, s)][key] for s in seeds]


def _generation_records(summary):
    return [r for r in summary["records"] if r["type"] == "generation"]


def _last_epoch_of_each_generation(summary):
    last = {}
    for r in summary["records"]:
        if r["type"] == "epoch":
            last[r["generation"]] = r
    return [last[g] for g in sorted(last)]


def report(results: dict, seeds: list[int], base: Config, command: str, elapsed: float) -> str:
    G = base.generations
    window = base.da_window or f"{scaled_window(base.epochs * base.steps_per_epoch)} (scaled: --da-window 0)"
    lines = [
        "# CReST on digits-LT: FixMatch vs CReST vs CReST+", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min of training on {machine_description()}; an interrupted "
        "run resumes where it stopped; without `--update-docs` the report goes to the run directory).", "",
        f"Data: digits-LT from scikit-learn's bundled digits, imbalance γ = {base.imbalance:g}, labelled fraction "
        f"β = {base.labeled_fraction:g}, balanced test set of {base.test_per_class} images per class, a random class → "
        f"rank map per seed. Budget per generation: {base.epochs} epochs × {base.steps_per_epoch} steps, batch "
        f"{base.batch_size} labelled + {base.mu}×{base.batch_size} unlabelled. FixMatch gets one generation's budget. "
        f"Protocol: DA prior {base.dist_align} (window {window}, start {base.da_start}), EMA {base.ema_schedule}, LR {base.lr_schedule}, "
        f"unlabelled stream {base.unlabelled_stream}. Seeds: {seeds}. Numbers are the EMA model's on the test set "
        "at the end of each generation (never a best-on-test pick), mean ± std over seeds; 'tail recall' is the "
        "mean recall of that seed's 3 rarest labelled classes; 'logit-adjusted' is the accuracy of "
        "argmax(log p − log labelled prior), as the official code reports it.", "",
        "## Per generation", "",
        "| method | metric | " + " | ".join(f"gen {g + 1}" for g in range(G)) + " |",
        "|---|---|" + "---|" * G,
    ]
    for metric, label in (("test_balanced_accuracy", "balanced acc"), ("tail_recall", "tail recall"),
                          ("test_logit_adjusted_accuracy", "logit-adjusted acc")):
        for name in METHODS:
            row = []
            for g in range(G):
                vals = [s["per_generation"][g][metric] for (n, _), s in results.items()
                        if n == name and g < len(s["per_generation"])]
                row.append(mean_std(vals) if vals else "")
            lines.append(f"| {name} | {label} | " + " | ".join(row) + " |")

    metrics = (("test_balanced_accuracy", "balanced acc"), ("test_tail_recall", "tail recall"),
               ("test_logit_adjusted_accuracy", "logit-adjusted acc"))
    lines += ["", "## Paired differences, final generation (per seed: first minus second)", "",
              "mean ± std [95 % interval, Student's t], seeds where the first is higher.", "",
              "| comparison | " + " | ".join(label for _, label in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for a, b in (("crest", "fixmatch"), ("crest+", "fixmatch"), ("crest+", "crest")):
        lines.append(f"| {a} − {b} | " + " | ".join(
            paired(_final(results, a, seeds, key), _final(results, b, seeds, key)) for key, _ in metrics) + " |")

    lines += ["", "## Mechanism: what each generation adds, and CReST+'s running prior", "",
              "Pseudo-labels added after each generation (before the next): their count, the share labelled as "
              "one of the 3 rarest classes, and those labels' precision and recall (the share of a tail class's "
              "unlabelled images added with its label); for CReST+ the total-variation distance between the "
              "running prior p~ that aligns the pseudo-labels and the model's mean prediction on the unlabelled "
              "batches, at the last epoch of the generation (0: p~ tracks the model).", "",
              "| method | after gen | added | tail share | tail precision | tail recall | TV(p~, model) |",
              "|---|---|---|---|---|---|---|"]
    for name in ("crest", "crest+"):
        for g in range(G - 1):
            added, share, prec, rec, tv = [], [], [], [], []
            for s in seeds:
                summary = results[(name, s)]
                gens = _generation_records(summary)
                if g >= len(gens) or "pseudo_labels" not in gens[g]:
                    continue
                pl, tail = gens[g]["pseudo_labels"], _tail(summary)
                total = sum(pl["count"])
                added.append(total)
                share.append(sum(pl["count"][c] for c in tail) / total if total else None)
                prec.append(_mean_or_none([pl["precision"][c] for c in tail]))
                rec.append(_mean_or_none([pl["recall"][c] for c in tail]))
                epochs = _last_epoch_of_each_generation(summary)
                tv.append(epochs[g].get("da_tv_distance") if g < len(epochs) else None)
            lines.append(f"| {name} | {g + 1} | {mean_std(added, 0)} | {mean_std(share)} | {mean_std(prec)} | "
                         f"{mean_std(rec)} | {mean_std(tv)} |")

    lines += ["", "## FixMatch: per-class test precision vs recall, by class rank (1 = most labelled)", "",
              "| rank | precision | recall |", "|---|---|---|"]
    num_classes = len(next(iter(results.values()))["class_rank"])
    for rank in range(1, num_classes + 1):
        prec, rec = [], []
        for (name, _), s in results.items():
            if name != "fixmatch":
                continue
            c = s["class_rank"].index(rank)
            last = _generation_records(s)[-1]["test"]
            prec.append(last["precision"][c])
            rec.append(last["recall"][c])
        lines.append(f"| {rank} | {mean_std(prec)} | {mean_std(rec)} |")
    for key, label in (("test_balanced_accuracy", "balanced accuracy"), ("test_tail_recall", "tail recall")):
        lines += ["", f"## Final {label} per seed", "", "| method | " + " | ".join(f"seed {s}" for s in seeds)
                  + " |", "|---|" + "---|" * len(seeds)]
        for name in METHODS:
            lines.append(f"| {name} | " + " | ".join(f"{results[(name, s)][key]:.3f}" for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/crest-experiment")
    parser.add_argument("--doc", default="docs/crest_digits_lt.md")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite --doc (its tables); without it the report goes to OUT/report.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--generations", type=int, default=6, help="CReST generations (the official 6)")
    parser.add_argument("--epochs", type=int, default=6)
    for name in OPTIONS:  # the protocol options and --precision, with the Config's defaults and help
        f = next(f for f in dataclasses.fields(Config) if f.name == name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default,
                            choices=f.metadata.get("choices"), help=f.metadata["help"].replace("%", "%%"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the digits CNN gains little from more, and the numbers depend on it)")
    parser.add_argument("--stacked", action="store_true",
                        help="each method's seeds stacked in one process (same numbers; slower on a CPU, see run())")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol = {name: getattr(args, name) for name in OPTIONS}
    base = Config(generations=args.generations, epochs=args.epochs, **protocol)
    validate_config(base)
    start = time.perf_counter()
    results = run(Path(args.out), args.seeds, base, stacked=args.stacked)
    defaults = Config()
    command = ("python -m fastsmall.methods.crest.experiment --seeds " + " ".join(map(str, args.seeds))
               + f" --generations {args.generations} --epochs {args.epochs}"
               + "".join(f" --{k.replace('_', '-')} {v}" for k, v in protocol.items() if v != getattr(defaults, k))
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (" --stacked" if args.stacked else "") + (" --update-docs" if args.update_docs else ""))
    elapsed = max(time.perf_counter() - start, sum(s["seconds"] for s in results.values()))  # noqa: the runs' own
    text = report(results, args.seeds, base, command, elapsed)
    publish(args.out, args.doc, args.update_docs, text)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {f"{name}|{seed}": {k: v for k, v in s.items() if k != "records"} for (name, seed), s in results.items()},
        indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
