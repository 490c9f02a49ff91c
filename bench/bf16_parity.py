"""Does ``--precision bf16`` preserve a method's documented results? The documented experiment of
Knowledge Evolution (docs/ke_digits_small.md), CReST (docs/crest_digits_lt.md) or PoseAug
(docs/poseaug_trained_augmentor.md), run with its own reproduce command once in fp32 and once in
bf16 for the same seeds, compared per seed (paired).

    python bench/bf16_parity.py --method ke|crest|poseaug [--seeds ...] [--out runs/parity] [--emulate]
    python bench/bf16_parity.py --method poseaug --fp32-doc docs/poseaug_trained_augmentor.md

``--fp32-doc`` (PoseAug, whose docs list the last epoch's MPJPE per seed) takes the fp32 side
from the documented run's per-seed table instead of running it again: an hour of machine time
saved, at the price of comparing across machines when the doc was made on another CPU (fp32
itself is not bit-identical across instruction sets), which the output says.

Each run is the experiment runner itself (``fastsmall.methods.<method>.experiment``) with
``--precision fp32`` / ``bf16`` and ``--out OUT/<method>-<precision>``; runs resume, so an
interrupted comparison (or runs started by hand with the same arguments) continue where they
stopped. Prints, per reported metric of the final generation, mean +- std over seeds in fp32 and
in bf16, the paired difference bf16 - fp32 (mean +- std [95 % t-interval], seeds where bf16 is
higher) and fp32's seed-to-seed standard deviation: bf16 "preserves the result" where the paired
difference is small against that spread.

bf16 needs bf16 matrix units (AMX-BF16 / AVX512-BF16; ``python -m fastsmall.info``). Without
them ``--precision bf16`` runs fp32, which would compare fp32 with itself: the script refuses,
unless ``--emulate`` (FASTSMALL_BF16_EMULATE=1: bf16 operands with float32 accumulation at ~10x
fp32's time) asks for the numerics without the speed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path

def _field(run: str, key: str):
    """The getter of a KE / CReST results.json value: results["run|seed"][key]."""
    return lambda results, seed: results[f"{run}|{seed}"][key]


def _mpjpe(condition: str, evaluation: str):
    """The getter of a PoseAug results.json value: the last epoch's MPJPE on one evaluation set."""
    return lambda results, seed: results[f"{condition}-seed{seed}"]["last"][evaluation]["mpjpe"]


def _minus(a, b):
    """The getter of a per-seed difference of two getters (a method's effect, paired by seed)."""
    return lambda results, seed: a(results, seed) - b(results, seed)


_KE_KELS, _KE_LONG = _field("KE (KELS)", "test_accuracy"), _field("long", "test_accuracy")
_CREST = {m: {k: _field(m, k) for k in ("test_balanced_accuracy", "test_tail_recall")}
          for m in ("fixmatch", "crest", "crest+")}
_BROAD = {c: _mpjpe(c, "synthetic-broad") for c in ("no-augment", "random-view", "frozen", "poseaug")}

#: the documented experiments: (runner module, the doc's seeds, its other arguments, (label, getter) rows,
#: digits).
#: The rows: each run's final numbers, then the comparisons the doc draws its conclusions from.
EXPERIMENTS = {
    "ke": ("fastsmall.methods.ke.experiment",  # docs/ke_digits_small.md
           range(10), ["--generations", "10", "--epochs", "40", "--per-class", "10"],
           [("KE (KELS) dense acc, gen 10", _KE_KELS),
            ("KE (KELS) slim acc, gen 10", _field("KE (KELS)", "slim_test_accuracy")),
            ("N1 (gen 1) acc", _field("KE (KELS)", "n1_test_accuracy")),
            ("KE (WELS) dense acc, gen 10", _field("KE (WELS)", "test_accuracy")),
            ("restart acc, gen 10", _field("restart", "test_accuracy")),
            ("long acc, end", _KE_LONG),
            ("KE (KELS) N10 − N1", _minus(_KE_KELS, _field("KE (KELS)", "n1_test_accuracy"))),
            ("KE (KELS) − long", _minus(_KE_KELS, _KE_LONG))], 3),
    "crest": ("fastsmall.methods.crest.experiment",  # docs/crest_digits_lt.md
              range(5), ["--generations", "6", "--epochs", "6"],
              [(f"{m} {label}", _field(m, key)) for m in ("fixmatch", "crest", "crest+")
               for key, label in (("test_balanced_accuracy", "balanced acc"), ("test_tail_recall", "tail recall"),
                                  ("test_logit_adjusted_accuracy", "logit-adjusted acc"))]
              + [(f"{a} − fixmatch {label}", _minus(_CREST[a][key], _CREST["fixmatch"][key]))
                 for a in ("crest", "crest+")
                 for key, label in (("test_balanced_accuracy", "balanced acc"), ("test_tail_recall", "tail recall"))],
              3),
    "poseaug": ("fastsmall.methods.poseaug.experiment",  # docs/poseaug_trained_augmentor.md
                range(5), ["--train-size", "8192", "--batch-size", "256", "--epochs", "10",
                 "--baseline-epochs", "20", "--estimator", "simple_baseline", "--estimator-width", "256",
                 "--warmup", "2", "--warmup-iters", "1920", "--gan-iters-per-epoch", "320"],
                [(f"{c} MPJPE {e} (mm)", _mpjpe(c, e)) for e in ("synthetic-broad", "bvh")
                 for c in ("no-augment", "random-view", "frozen", "poseaug")]
                + [(f"{a} − {b} MPJPE synthetic-broad (mm)", _minus(_BROAD[a], _BROAD[b]))
                   for a, b in (("poseaug", "frozen"), ("poseaug", "random-view"), ("poseaug", "no-augment"),
                                ("frozen", "no-augment"))], 1),
}


def run_experiment(module: str, argv: list[str], log: Path) -> tuple[dict, str]:
    """(results.json of the run: {"run|seed": summary}, its report's reproduce line)."""
    import importlib
    experiment = importlib.import_module(module)
    out = Path(argv[argv.index("--out") + 1])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, contextlib.redirect_stdout(f):
        code = experiment.main(argv)
    if code != 0:
        raise SystemExit(f"{module} {' '.join(argv)} failed (exit {code}); its output: {log}")
    reproduce = next((line for line in (out / "report.md").read_text().splitlines() if line.startswith("Reproduce:")),
                     "")
    return json.loads((out / "results.json").read_text()), reproduce


def doc_results(path: Path) -> tuple[dict, str]:
    """(results.json-like values, the reproduce line) of a PoseAug doc, from its "MPJPE per seed"
    table: {"condition-seedS": {"last": {evaluation set: {"mpjpe": value}}}}."""
    text = path.read_text()
    if "## MPJPE per seed (last epoch)" not in text:
        raise SystemExit(f"--fp32-doc {path}: no '## MPJPE per seed (last epoch)' table (a PoseAug experiment doc has one)")
    table = [line for line in text.split("## MPJPE per seed (last epoch)")[1].split("\n## ")[0].splitlines()
             if line.startswith("|")]
    columns = [c.strip() for c in table[0].strip("|").split("|")]
    results = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        last = results.setdefault(f"{cells[0]}-seed{cells[1]}", {"last": {}})["last"]
        for name, value in zip(columns[2:], cells[2:]):
            last[name] = {"mpjpe": float(value)}
    reproduce = next((line for line in text.splitlines() if line.startswith("Reproduce:")), "")
    return results, reproduce


def compare(rows, seeds, fp32: dict, bf16: dict, digits: int = 3) -> list[str]:
    import statistics

    from fastsmall.methods.common.report import mean_std, paired
    lines = ["| metric (final generation / epoch) | fp32 | bf16 | bf16 − fp32 (paired) | fp32 seed-to-seed std |",
             "|---|---|---|---|---|"]
    for label, get in rows:
        a = [get(fp32, s) for s in seeds]
        b = [get(bf16, s) for s in seeds]
        sd = statistics.stdev(a) if len(a) > 1 else float("nan")
        lines.append(f"| {label} | {mean_std(a, digits)} | {mean_std(b, digits)} | {paired(b, a, digits)} | "
                     f"{sd:.{digits}f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=sorted(EXPERIMENTS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the documented experiment's seeds")
    ap.add_argument("--out", default="runs/parity")
    ap.add_argument("--emulate", action="store_true",
                    help="without bf16 matrix units: emulated bf16 numerics (FASTSMALL_BF16_EMULATE=1, ~10x slower)")
    ap.add_argument("--fp32-doc", type=Path,
                    help="poseaug: the fp32 side from this doc's per-seed MPJPE table instead of an fp32 run")
    args = ap.parse_args(argv)
    if args.emulate:
        os.environ["FASTSMALL_BF16_EMULATE"] = "1"  # before the methods read it
    import torch
    from fastsmall.methods.common.report import machine_description
    from fastsmall.methods.common.speed import bf16_units
    units = bf16_units(torch.device("cpu"))[0]
    if not units and not args.emulate:
        ap.error("this CPU has no bf16 matrix units (AMX-BF16 / AVX512-BF16), so --precision bf16 would run fp32 "
                 "and the comparison would be fp32 against itself; pass --emulate for the bf16 numerics at ~10x "
                 "fp32's time")
    module, doc_seeds, doc_args, rows, digits = EXPERIMENTS[args.method]
    seeds = list(args.seeds or doc_seeds)
    base = ["--seeds", *map(str, seeds), *doc_args]
    if args.fp32_doc is not None and args.method != "poseaug":
        ap.error("--fp32-doc: only PoseAug's docs list their per-seed numbers")
    results, reproduce = {}, {}
    if args.fp32_doc is not None:
        results["fp32"], reproduce["fp32"] = doc_results(args.fp32_doc)
    for precision in ("bf16",) if args.fp32_doc is not None else ("fp32", "bf16"):
        out = Path(args.out) / f"{args.method}-{precision}"
        print(f"[parity] {args.method} {precision}: {out}", file=sys.stderr, flush=True)
        results[precision], reproduce[precision] = run_experiment(
            module, base + ["--precision", precision, "--out", str(out)], Path(args.out) / f"{args.method}-{precision}.log")
    minutes = {p: re.search(r"\(([\d.]+) min", reproduce[p]) for p in reproduce}
    print(f"{args.method}: the documented experiment ({' '.join(base)}), fp32 against bf16, seeds {seeds}; bf16 "
          f"{'on bf16 matrix units' if units else 'EMULATED (no bf16 matrix units on this CPU)'}; "
          f"{machine_description()}; training time fp32 "
          f"{minutes['fp32'].group(1) if minutes['fp32'] else '?'} min, bf16 "
          f"{minutes['bf16'].group(1) if minutes['bf16'] else '?'} min."
          + (f" The fp32 side is {args.fp32_doc}'s table: {reproduce['fp32']}" if args.fp32_doc else "") + "\n")
    print("\n".join(compare(rows, seeds, results["fp32"], results["bf16"], digits)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
