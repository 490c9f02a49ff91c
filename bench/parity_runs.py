"""Bit-for-bit behaviour check for refactors: run every method's short configs and digest what
they leave behind (summary.json, metrics.jsonl without wall-clock fields, every tensor of the
final checkpoint), so that two versions of the code can be compared exactly.

    python bench/parity_runs.py --out /tmp/before            # on the old code
    python bench/parity_runs.py --out /tmp/after             # on the new code
    python bench/parity_runs.py --compare /tmp/before/digest.json /tmp/after/digest.json

Runs on one thread (bitwise results do not depend on the machine's load). Not a benchmark and
not part of the tests: the tests hold their own, faster equivalence checks.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

# (run name, method module, config fields); "impl" is "fused" or "official" (older code: "reference")
RUNS = [
    ("crest", "crest", dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1, generations=2)),
    ("crest-plus", "crest", dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1, generations=2,
                                 plus=True, threshold=0.5)),
    ("crest-plus-ema", "crest", dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1,
                                     generations=2, plus=True, dist_align="ema", threshold=0.5)),
    ("crest-plus-official", "crest", dict(epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1,
                                          generations=2, plus=True, impl="official", threshold=0.5)),
    ("ke", "ke", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                      generations=2)),
    ("ke-wels", "ke", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                           generations=2, split="wels")),
    ("ke-official", "ke", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                               generations=2, impl="official")),
    ("ke-long", "ke", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                           generations=2, mode="long")),
    ("dsd", "dsd", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                        sparsity=0.5)),
    ("dsd-official", "dsd", dict(per_class=4, test_per_class=5, width=8, epochs=2, warmup_epochs=0, batch_size=8,
                                 sparsity=0.5, impl="official")),
    ("poseaug", "poseaug", dict(train_size=256, test_size=64, batch_size=64, epochs=3, warmup=1, baseline_epochs=1,
                                estimator="simple_baseline", estimator_width=64, pool_size=96)),
    ("poseaug-official", "poseaug", dict(train_size=256, test_size=64, batch_size=64, epochs=3, warmup=1,
                                         baseline_epochs=1, estimator="simple_baseline", estimator_width=64,
                                         pool_size=96, impl="official")),
    ("poseaug-no-augment", "poseaug", dict(train_size=256, test_size=64, batch_size=64, epochs=3, warmup=1,
                                           baseline_epochs=1, estimator="simple_baseline", estimator_width=64,
                                           augment=False)),
]
VOLATILE = {"seconds"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _tensors(obj, prefix=""):
    """{path: sha of bytes} for every tensor in a nested checkpoint (the rng state left out:
    its layout is not the behaviour)."""
    out = {}
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        out[prefix] = f"{t.dtype}{tuple(obj.shape)}:" + _sha(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k != "rng":
                out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def _impl_word(config_cls, impl: str) -> str:
    field = next(f for f in dataclasses.fields(config_cls) if f.name == "impl")
    choices = field.metadata.get("choices", [])
    return "reference" if impl == "official" and "official" not in choices else impl


def run_all(out: Path, only: list[str] | None) -> dict:
    import importlib

    from fastsmall.methods.common import load_checkpoint

    torch.set_num_threads(1)
    digest = {}
    for name, method, fields in RUNS:
        if only and name not in only:
            continue
        module = importlib.import_module(f"fastsmall.methods.{method}")
        fields = dict(fields)
        if "impl" in fields:
            fields["impl"] = _impl_word(module.Config, fields["impl"])
        run = out / name
        cfg = module.Config(out=str(run), quiet=True, **fields)
        summary = module.train(cfg)
        metrics = [_strip(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        digest[name] = {"summary": _sha(json.dumps(_strip(summary), sort_keys=True).encode()),
                        "metrics": _sha(json.dumps(metrics, sort_keys=True).encode()),
                        "tensors": _tensors(state)}
        print(f"{name:<22} summary {digest[name]['summary']} metrics {digest[name]['metrics']} "
              f"({len(digest[name]['tensors'])} tensors)", flush=True)
    (out / "digest.json").write_text(json.dumps(digest, indent=1, sort_keys=True))
    return digest


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'} digest")
            bad += 1
            continue
        ra, rb = a[name], b[name]
        diffs = [k for k in ("summary", "metrics") if ra[k] != rb[k]]
        ta, tb = ra["tensors"], rb["tensors"]
        changed = [k for k in ta if k in tb and ta[k] != tb[k]]
        renamed = sorted(set(ta) ^ set(tb))
        status = "identical" if not diffs and not changed else "DIFFERENT"
        bad += status != "identical"
        print(f"{name:<22} {status}: summary/metrics differ in {diffs or 'nothing'}; "
              f"{len(changed)} of {len(set(ta) & set(tb))} common tensors differ"
              + (f"; {len(renamed)} tensor paths in one digest only" if renamed else ""))
        for k in changed[:5]:
            print(f"    {k}: {ta[k]} vs {tb[k]}")
        for k in renamed[:8]:
            print(f"    only in {'first' if k in ta else 'second'}: {k}")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for the runs and digest.json")
    p.add_argument("--only", nargs="+", help="run names to run (default: all)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two digest.json files")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        p.error("--out or --compare is required")
    args.out.mkdir(parents=True, exist_ok=True)
    run_all(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
