"""``python -m fastsmall.methods.dsd`` (also ``fastsmall dsd``; ``torchrun ... -m fastsmall.methods.dsd``)."""
from __future__ import annotations

import json

from ..common.cli import run
from .config import Config
from .train import train


def result_table(summary: dict) -> str:
    """The per-phase table of a DSD run (dense / sparse / re-dense) and the headline numbers as JSON."""
    lines = [f"{'phase':<10}{'epochs':>8}{'test acc':>10}{'zero weights':>14}"]
    for p in summary["per_phase"]:
        lines.append(f"{p['phase']:<10}{p['epochs_trained']:>8}{p['test_accuracy']:>10.3f}"
                     f"{p['weight_sparsity']:>14.3f}")
    lines.append(json.dumps({k: summary[k] for k in ("method", "test_accuracy", "dense_test_accuracy",
                                                     "sparse_test_accuracy")}))
    return "\n".join(lines)


def main(argv=None) -> int:
    return run(argv, name="dsd", description="Dense-Sparse-Dense training", config_cls=Config, train=train,
               report=lambda summary, args: result_table(summary))


if __name__ == "__main__":
    raise SystemExit(main())
