"""Python overhead of the op wrappers, this tree against a baseline revision, side by side.

    python3 bench/dispatch_overhead.py [--baseline REV] [--repeats 7]

The baseline (default: the merge base with ``main``) is exported with ``git archive`` into a
temporary folder, with this tree's compiled extension copied in (csrc is the same), and each
repeat runs one worker subprocess per tree, interleaved (old, new, old, new, ...) so that a
change of machine load hits both. A worker times small calls, where the wrapper's Python work is
a visible share: per case the median over blocks of the time per call. The report gives, per case,
the median over repeats for each tree and their ratio (new / old; < 1 is faster).

Not collected by pytest (the name starts with neither bench_ nor test_).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import fastsmall as fs
from torch import nn

def per_call(fn, iters, blocks=15, warmup=30):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - t0) / iters)
    times.sort()
    return times[len(times) // 2]

sk = fs.Skeleton.h36m16()
out = {}
for B in (16, 1024):
    x = torch.randn(B, 16, 3, requires_grad=True)
    g = torch.randn(B, 15, 3)
    def kcs_fwd_bwd():
        torch.autograd.grad(fs.ops.kcs_forward(x, sk), x, g)
    out[f"kcs_forward fwd+bwd B={B}"] = per_call(kcs_fwd_bwd, 200)
x = torch.randn(1024, 16, 3)
out["bone_decompose fwd B=1024"] = per_call(lambda: fs.ops.bone_decompose(x, sk), 200)
u = fs.ops.bone_decompose(x, sk)[0]
out["part_kcs_gram fwd B=1024"] = per_call(lambda: fs.ops.part_kcs_gram(u, sk), 100)

logits = torch.randn(448, 10)
prior, running = torch.rand(10) + 0.1, torch.softmax(torch.randn(10), 0)
out["distribution_align 448x10"] = per_call(lambda: fs.ops.distribution_align(logits, prior, running, 0.5, 0.95), 300)
strong = torch.randn(448, 10, requires_grad=True)
label, mask = torch.randint(0, 10, (448,)), torch.rand(448) > 0.5
def ce_fwd_bwd():
    torch.autograd.grad(fs.ops.masked_cross_entropy(strong, label, mask), strong)
out["masked_cross_entropy fwd+bwd 448x10"] = per_call(ce_fwd_bwd, 300)
da = fs.ops.DistAlign(10)
out["DistAlign step 448x10"] = per_call(lambda: da(logits, prior, 0.5), 300)

model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(512, 64), nn.Linear(64, 10))
ws = [model[0].weight, model[1].weight, model[3].weight, model[4].weight]
masks = [fs.ops.KELS(8, 1), fs.ops.KELS(16, 8), fs.ops.WELS(0.5, 3), fs.ops.KELS(10, 32)]
out["ke_reinit_ 4-layer CNN"] = per_call(lambda: fs.ops.ke_reinit_(ws, masks, seed=0, generation=1), 300)
out["masked_mul_ 4-layer CNN"] = per_call(lambda: fs.ops.masked_mul_(ws, masks), 300)
print(json.dumps(out))
"""


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def export_baseline(rev: str, into: Path) -> Path:
    """The baseline revision's tree with this tree's compiled extension (and its build record)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for built in list((ROOT / "fastsmall").glob("_C*.so")) + [ROOT / "fastsmall" / "_build_info.json"]:
        if built.exists():
            shutil.copy2(built, into / "fastsmall" / built.name)
    return into


def run_worker(tree: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-c", WORKER], cwd=tree, env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare with (default: merge base with main)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rev = args.baseline or _git("merge-base", "HEAD", "main")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export_baseline(rev, Path(tmp))
        runs = {"old": [], "new": []}
        for i in range(args.repeats):
            for name, tree in (("old", old_tree), ("new", ROOT)) if i % 2 == 0 else (("new", ROOT), ("old", old_tree)):
                runs[name].append(run_worker(tree))
    print(f"baseline {rev[:10]} vs this tree ({_git('rev-parse', '--short', 'HEAD')}), {args.repeats} repeats, "
          "1 thread; median time per call")
    print(f"| case | old (us) | new (us) | new / old |\n|---|---:|---:|---:|")
    for case in runs["old"][0]:
        old = statistics.median(r[case] for r in runs["old"]) * 1e6
        new = statistics.median(r[case] for r in runs["new"]) * 1e6
        print(f"| {case} | {old:.1f} | {new:.1f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
