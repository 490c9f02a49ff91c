"""The documented digits-small experiment: Knowledge Evolution vs its controls over several seeds.

    python -m fastsmall.methods.ke.experiment --out runs/ke-experiment [--update-docs]

Per seed, four runs of N generations x E epochs on the same training subset, initial
weights and batch order: KE with KELS (dense and slim accuracy), KE with WELS, and the
two controls at equal compute -- ``restart`` (every generation restarts the optimizer and
the LR schedule, nothing is re-initialised) and ``long`` (one schedule over N x E epochs,
evaluated every E epochs). The N1 baseline is generation 1 of these runs (the same
computation as a 1-generation run). Writes a Markdown report (mean +- std over seeds,
paired per-seed differences) and a plot next to it: ``out/report.md``, or with ``--update-docs``
``--doc`` (keeping its hand-written "What reproduces" section).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from ..common.config import validate_config
from ..common.report import machine_description, mean_std, paired, publish, report_path
from ..common.speed import add_precision_argument
from .config import Config
from .plots import plot_comparison
from .train import train

DEFAULT_DOC = "docs/ke_digits_small.md"
RUNS = {
    "KE (KELS)": dict(mode="ke", split="kels"),
    "KE (WELS)": dict(mode="ke", split="wels"),
    "restart": dict(mode="restart", split="kels"),
    "long": dict(mode="long", split="kels"),
}


def _changes(name: str, base_changes: dict, kels_rate: float, wels_rate: float) -> dict:
    """A run's Config changes: its mode and split, at that split's rate (the controls use the KELS
    rate: their slim numbers are the KELS slices)."""
    return {**base_changes, "split_rate": wels_rate if base_changes["split"] == "wels" else kels_rate}


def _run_dir(name: str, changes: dict) -> str:
    return f"{name.split()[0].lower()}{'-' + changes['split'] if changes['mode'] == 'ke' else ''}"


def _say(name, seed, summary, generations):
    print(f"[experiment] {name} seed {seed}: gen 1 {summary['n1_test_accuracy']:.3f} -> gen {generations} "
          f"{summary['test_accuracy']:.3f}" + (f" (slim {summary['slim_test_accuracy']:.3f})"
                                               if summary["slim_test_accuracy"] is not None else ""), flush=True)


def run(out: Path, seeds: list[int], base: Config, stacked: bool = True, wels_rate: float | None = None) -> dict:
    """{(run name, seed): that seed's summary}. ``stacked``: every run's seeds trained together in
    one process (``Config.seeds``: each seed still exactly its own run, out/<run>-seeds/seed-S/);
    else one single-seed run after another (out/<run>-seedS/)."""
    results = {}
    wels_rate = base.split_rate if wels_rate is None else wels_rate
    runs = {name: _changes(name, changes, base.split_rate, wels_rate) for name, changes in RUNS.items()}
    if stacked:
        for name, changes in runs.items():
            # resume=True: an interrupted experiment continues where it stopped (a finished run is read back)
            cfg = dataclasses.replace(base, seeds=list(seeds), out=str(out / f"{_run_dir(name, changes)}-seeds"),
                                      quiet=True, resume=True, **changes)
            start = time.perf_counter()
            summary = train(cfg)
            print(f"[experiment] {name}: {len(seeds)} seeds stacked ({time.perf_counter() - start:.0f} s)", flush=True)
            for seed in seeds:
                results[(name, seed)] = summary["per_seed"][str(seed)]
                _say(name, seed, results[(name, seed)], base.generations)
        return results
    for seed in seeds:
        for name, changes in runs.items():
            cfg = dataclasses.replace(base, seed=seed, out=str(out / f"{_run_dir(name, changes)}-seed{seed}"),
                                      quiet=True, resume=True, **changes)
            start = time.perf_counter()
            results[(name, seed)] = train(cfg)
            _say(name, seed, results[(name, seed)], base.generations)
            print(f"[experiment]   ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def run_seconds(out: Path, seeds: list[int], stacked: bool) -> float:
    """The runs' own epoch times from their metrics (a resumed experiment's wall time would leave
    out what earlier calls did); a stacked run's epoch is logged once per seed, so one seed counts."""
    total = 0.0
    for name, changes in RUNS.items():
        dirs = ([out / f"{_run_dir(name, changes)}-seeds" / f"seed-{seeds[0]}"] if stacked
                else [out / f"{_run_dir(name, changes)}-seed{s}" for s in seeds])
        for d in dirs:
            path = d / "metrics.jsonl"
            if path.exists():
                total += sum(json.loads(line).get("seconds") or 0.0 for line in path.read_text().splitlines()
                             if line.strip())
    return total


def _series(results, name, seeds, key):
    return [[g[key] for g in results[(name, s)]["per_generation"]] for s in seeds]


def report(results: dict, seeds: list[int], base: Config, command: str, elapsed: float, plot_name: str,
           stacked: bool = True, wels_rate: float | None = None) -> str:
    N, E = base.generations, base.epochs
    first = results[("KE (KELS)", seeds[0])]
    d, s = first["dense"], first["slim"]
    lines = [
        "# Knowledge Evolution on digits-small: KE vs N1, slim vs dense, KE vs equal-compute controls", "",
        f"Reproduce: `{command}` ({elapsed / 60:.1f} min on {machine_description()}; "
        + ("every run's seeds stacked in one process, `--seeds`" if stacked else "one run after another") + ").",
        "",
        f"Data: digits-small (scikit-learn's bundled 8×8 digits), {base.per_class or 10} training images per class "
        f"drawn per seed, a fixed held-out test set of {base.test_per_class} images per class "
        f"({10 * base.test_per_class} images). Network: DigitsCNN width {base.width} "
        f"({d['params']:,} parameters, {d['macs']:,} MACs); slim network at s_r = {base.split_rate:g}: "
        f"{s['params']:,} parameters ({s['params'] / d['params']:.1%}), {s['macs']:,} MACs "
        f"({s['macs'] / d['macs']:.1%}); fit-hypothesis sparsity (share of conv/linear weights outside the fit "
        f"hypothesis) {first['fit_sparsity']:.3f} for KELS. Training: N = {N} generations × E = {E} epochs, batch "
        f"{base.batch_size}, SGD lr {base.lr:g} (momentum {base.momentum:g}, weight decay {base.weight_decay:g}, "
        f"label smoothing {base.label_smoothing:g}), {base.warmup_epochs} warm-up epochs + cosine, reset with "
        f"`{base.reinit}`. Seeds: {seeds}. Accuracy is that of the last epoch of a generation (never a best-on-test "
        "pick), mean ± std over seeds. All runs of a seed share the training subset, the initial weights and the "
        "batch order; generation 1 of KE (KELS), KE (WELS) and restart is the same computation, the N1 baseline "
        "(long's first E epochs differ: its learning rate has not decayed yet).", "",
        "Runs: **KE (KELS)** / **KE (WELS)**: re-initialise the reset hypothesis every generation; **restart**: "
        "every generation only restarts the optimizer and the LR schedule; **long**: one optimizer and one LR "
        f"schedule over {N}×{E} epochs, evaluated every {E} epochs. Slim accuracy is the KELS slim network "
        "(leading slices copied, no fine-tuning) extracted from each run's dense network, controls included; "
        "'fit only' is the dense network with the reset hypothesis zeroed (DSD-style; for KELS the slim "
        "network's computation)." + (f" KE (WELS) at s_r = {wels_rate:g}." if wels_rate is not None else ""), "",
        f"![accuracy vs generation]({plot_name})", "",
        "## Test accuracy per generation (generation g = g × E epochs of compute)", "",
        "| run | " + " | ".join(f"g{g}" for g in range(1, N + 1)) + " |",
        "|---|" + "---|" * N,
    ]
    for name in RUNS:
        for key, label in (("test_accuracy", "dense"), ("slim_test_accuracy", "slim"),
                           ("fit_only_test_accuracy", "fit only")):
            series = _series(results, name, seeds, key)
            if all(v is None for row in series for v in row):
                continue
            cols = [mean_std([row[g] for row in series]) for g in range(N)]
            lines.append(f"| {name} {label} | " + " | ".join(cols) + " |")
    ke_dense = [results[("KE (KELS)", s)]["test_accuracy"] for s in seeds]
    ke_slim = [results[("KE (KELS)", s)]["slim_test_accuracy"] for s in seeds]
    n1 = [results[("KE (KELS)", s)]["n1_test_accuracy"] for s in seeds]
    we_dense = [results[("KE (WELS)", s)]["test_accuracy"] for s in seeds]
    lines += [
        "", "## Headline comparisons (paired over seeds)", "",
        "| comparison | difference in test accuracy |", "|---|---|",
        f"| KE (KELS) N{N} − N1 | {paired(ke_dense, n1)} |",
        f"| KE (WELS) N{N} − N1 | {paired(we_dense, n1)} |",
        f"| KE (KELS) N{N} − restart N{N} | "
        f"{paired(ke_dense, [results[('restart', s)]['test_accuracy'] for s in seeds])} |",
        f"| KE (KELS) N{N} − long ({N}×{E} epochs) | "
        f"{paired(ke_dense, [results[('long', s)]['test_accuracy'] for s in seeds])} |",
        f"| KE (WELS) N{N} − restart N{N} | "
        f"{paired(we_dense, [results[('restart', s)]['test_accuracy'] for s in seeds])} |",
        f"| KE (WELS) N{N} − long ({N}×{E} epochs) | "
        f"{paired(we_dense, [results[('long', s)]['test_accuracy'] for s in seeds])} |",
        f"| KE (KELS) slim N{N} − KE dense N{N} | {paired(ke_slim, ke_dense)} |",
        f"| KE (KELS) slim N{N} − N1 dense | {paired(ke_slim, n1)} |",
        f"| KE slim N{N} − restart slim N{N} | "
        f"{paired(ke_slim, [results[('restart', s)]['slim_test_accuracy'] for s in seeds])} |",
        f"| KE slim N{N} − long slim | "
        f"{paired(ke_slim, [results[('long', s)]['slim_test_accuracy'] for s in seeds])} |",
        "", "## Mean |w| of the reset hypothesis / mean |w| of the fit hypothesis (KELS masks), at each "
        "generation's end", "",
        "| run | " + " | ".join(f"g{g}" for g in range(1, N + 1)) + " |", "|---|" + "---|" * N,
    ]
    for name in ("KE (KELS)", "restart", "long"):
        series = _series(results, name, seeds, "reset_to_fit_magnitude")
        lines.append(f"| {name} | " + " | ".join(mean_std([row[g] for row in series], 2) for g in range(N)) + " |")
    lines += ["", f"## Final (generation {N}) test accuracy per seed", "",
              "| run | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for name in RUNS:
        lines.append(f"| {name} dense | " + " | ".join(f"{results[(name, s)]['test_accuracy']:.3f}" for s in seeds)
                     + " |")
    lines.append("| N1 (generation 1) | " + " | ".join(f"{v:.3f}" for v in n1) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ke-experiment")
    parser.add_argument("--doc", default=DEFAULT_DOC)
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite --doc (tables and figure); without it the report goes to OUT/report.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--kels-rate", type=float, default=0.5,
                        help="split rate s_r of KE (KELS) and of the controls' slim slices (the paper's tables: 0.8)")
    parser.add_argument("--wels-rate", type=float, default=0.5, help="split rate s_r of KE (WELS) (the paper's: 0.7)")
    add_precision_argument(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an 8x8 CNN gains nothing from more)")
    parser.add_argument("--sequential", action="store_true",
                        help="one single-seed run after another instead of each run's seeds stacked in one process")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = Config(generations=args.generations, epochs=args.epochs, per_class=args.per_class,
                  split_rate=args.kels_rate, precision=args.precision)
    validate_config(base)
    start = time.perf_counter()
    results = run(Path(args.out), args.seeds, base, stacked=not args.sequential, wels_rate=args.wels_rate)
    command = ("python -m fastsmall.methods.ke.experiment --seeds " + " ".join(map(str, args.seeds))
               + f" --generations {args.generations} --epochs {args.epochs} --per-class {args.per_class}"
               + (f" --kels-rate {args.kels_rate:g}" if args.kels_rate != 0.5 else "")
               + (f" --wels-rate {args.wels_rate:g}" if args.wels_rate != 0.5 else "")
               + (f" --precision {args.precision}" if args.precision != "fp32" else "")
               + (" --sequential" if args.sequential else "")
               # without --doc the command would rewrite the default doc, not this one
               + (f" --doc {args.doc}" if args.update_docs and args.doc != DEFAULT_DOC else "")
               + (" --update-docs" if args.update_docs else ""))
    doc = report_path(args.out, args.doc, args.update_docs)
    doc.parent.mkdir(parents=True, exist_ok=True)
    plot = doc.with_suffix(".png")
    panels = {
        "dense network": {name: _series(results, name, args.seeds, "test_accuracy") for name in RUNS},
        f"slim network (KELS fit hypothesis, s_r = {base.split_rate:g})": {
            name: _series(results, name, args.seeds, "slim_test_accuracy")
            for name in RUNS if RUNS[name]["split"] == "kels"},
    }
    plot_comparison(panels, plot, f"digits-small, {args.per_class} images/class, mean ± std over "
                                  f"{len(args.seeds)} seeds")
    elapsed = max(time.perf_counter() - start, run_seconds(Path(args.out), args.seeds, not args.sequential))
    text = report(results, args.seeds, base, command, elapsed, plot.name,
                  stacked=not args.sequential, wels_rate=args.wels_rate)
    publish(args.out, args.doc, args.update_docs, text)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {f"{name}|{seed}": s for (name, seed), s in results.items()}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
