"""Turn pytest-benchmark JSON files into bench/RESULTS.md.

    python bench/report.py bench/results/*.json --out bench/RESULTS.md

For each (op, mode, batch): medians of the eager reference, torch.compile'd
reference and fastsmall; fastsmall's speed-up over each; achieved GB/s (least
bytes the op must move / median); and the memory-traffic floor, i.e. those
bytes at the bandwidth of a plain copy measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

TARGETS = dict(eager=3.0, compiled=1.0, floor=2.0)
# Issue #17's exceptions: ke_reinit_ hashes two 32-bit words per value (compute, not memory), so
# its floor target is 3x; the part-Gram's bulk size is 2^18 (its references run out of memory above).
FLOOR_TARGET = {"ke_reinit_": 3.0}
BULK_BATCH = {"part_kcs_gram": 2 ** 18}


def load(paths):
    rows, meta = [], None
    for path in paths:
        data = json.loads(Path(path).read_text())
        if "benchmarks" not in data:  # e.g. kernel_speed.py's raw timings, which share the folder
            print(f"report.py: {path}: not a pytest-benchmark file, skipped", file=sys.stderr)
            continue
        meta = meta or data
        for b in data["benchmarks"]:
            info = dict(b["extra_info"])
            info["median_s"] = b["stats"]["median"]
            rows.append(info)
    return rows, meta


def machine_lines(meta):
    m = meta.get("machine_info", {})
    cpu = m.get("cpu", {})
    commit = meta.get("commit_info", {})
    extra = meta.get("fastsmall", {})
    lines = [
        f"- date: {meta.get('datetime', '?')}",
        f"- machine: {cpu.get('brand_raw', m.get('processor', '?'))}, {cpu.get('count', '?')} logical cores, "
        f"{m.get('system', '')} {m.get('release', '')}",
        f"- python {m.get('python_version', '?')}",
    ]
    for key in ("torch", "triton", "device", "cpu_capability", "kernel_isa", "torch_threads", "allocator"):
        if key in extra:
            lines.append(f"- {key}: {extra[key]}")
    if commit.get("id"):
        lines.append(f"- commit: {commit['id'][:10]}{' (dirty)' if commit.get('dirty') else ''}")
    return lines


def fmt_time(seconds):
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def render(rows, meta) -> str:
    # A copy row's family names the benchmark file it belongs to ("floor" = any family).
    floor_bw = {(r["family"], r["batch"]): r["bytes"] / r["median_s"] for r in rows if r["impl"] == "copy"}

    def floor_for(family, batch):
        return floor_bw.get((family, batch), floor_bw.get(("floor", batch)))

    cases = defaultdict(dict)
    for r in rows:
        if r["impl"] != "copy":
            cases[(r["family"], r["op"], r["mode"], r["batch"])][r["impl"]] = r
    out = ["# Benchmark results", "", *machine_lines(meta), "",
           "Medians. `vs eager` / `vs compiled`: fastsmall's speed-up over the eager / `torch.compile`d "
           "reference (higher is better). `GB/s`: least bytes the op must move / fastsmall's median. "
           "`floor`: those bytes at the bandwidth of a plain copy measured in the same run; "
           "`x floor`: fastsmall's time over the floor (1.0 is the best possible). Compile time is the first, "
           "compiling call of the compiled reference.", ""]
    for (family, B), bw in sorted(floor_bw.items()):
        out.append(f"- copy bandwidth for {family} at B={B}: {bw / 1e9:.1f} GB/s")
    out += ["", "| family | op | mode | B | eager | compiled | fastsmall | vs eager | vs compiled | GB/s | floor | "
            "x floor | compile |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    missed = []
    for (family, op, mode, B), impls in sorted(cases.items()):
        fast = impls.get("fastsmall")
        if fast is None:
            continue
        eager, comp = impls.get("eager"), impls.get("compiled")
        t = fast["median_s"]
        vs_e = eager["median_s"] / t if eager else None
        vs_c = comp["median_s"] / t if comp else None
        bw = floor_for(family, B)
        floor = fast["bytes"] / bw if bw else None
        x_floor = t / floor if floor else None
        cells = [family, op, mode, str(B), fmt_time(eager["median_s"]) if eager else "-",
                 fmt_time(comp["median_s"]) if comp else "-", fmt_time(t),
                 f"{vs_e:.2f}x" if vs_e else "-", f"{vs_c:.2f}x" if vs_c else "-",
                 f"{fast['bytes'] / t / 1e9:.1f}", fmt_time(floor) if floor else "-",
                 f"{x_floor:.2f}" if x_floor else "-",
                 f"{comp['compile_s']:.1f} s" if comp and comp.get("compile_s") else "-"]
        out.append("| " + " | ".join(cells) + " |")
        name = f"{op} {mode} B={B}"
        if vs_e is not None and vs_e < TARGETS["eager"]:
            missed.append(f"{name}: {vs_e:.2f}x eager (target {TARGETS['eager']}x)")
        if vs_c is not None and vs_c < TARGETS["compiled"]:
            missed.append(f"{name}: {vs_c:.2f}x compiled (target {TARGETS['compiled']}x)")
        floor_target = FLOOR_TARGET.get(op, TARGETS["floor"])
        if B >= BULK_BATCH.get(family, 2 ** 20) and x_floor is not None and x_floor > floor_target:
            missed.append(f"{name}: {x_floor:.2f}x the floor (target within {floor_target}x)")
    out += ["", "## Targets", "",
            f"fastsmall >= {TARGETS['eager']}x eager and >= {TARGETS['compiled']}x compiled at both sizes; "
            f"at B = 2^20 (part_kcs_gram: 2^18) within {TARGETS['floor']}x of the floor "
            f"(ke_reinit_: {FLOOR_TARGET['ke_reinit_']}x).", ""]
    out += [f"- missed: {m}" for m in missed] or ["- all met"]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--out", default=None, help="write Markdown here (default: stdout)")
    parser.add_argument("--notes", default=None, help="Markdown file appended after the table (analysis)")
    args = parser.parse_args(argv)
    rows, meta = load(args.json)
    text = render(rows, meta)
    if args.notes:
        text += "\n" + Path(args.notes).read_text()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
