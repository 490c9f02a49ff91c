"""``python -m fastsmall.methods.crest`` (also ``fastsmall crest``; ``torchrun ... -m fastsmall.methods.crest``)."""
from __future__ import annotations

import json

from ..common.cli import run
from .config import Config
from .train import train


def result_table(summary: dict) -> str:
    """One row per generation (generation 1 is FixMatch; numbered from 1, as KE and DSD): test accuracy (median of the last
    --eval-last epochs), balanced and logit-adjusted accuracy, recall of the 3 rarest classes."""
    lines = [f"{'generation':<12}{'test acc':>10}{'balanced':>10}{'logit-adj':>11}{'tail recall':>13}"]
    for g in summary["per_generation"]:
        adjusted = g.get("test_logit_adjusted_accuracy")
        lines.append(f"{g['generation']:<12}{g['test_accuracy']:>10.3f}{g['test_balanced_accuracy']:>10.3f}"
                     f"{(f'{adjusted:.3f}' if adjusted is not None else '-'):>11}{g['tail_recall']:>13.3f}")
    return "\n".join(lines)


def report(summary: dict, args=None) -> str:
    """The per-generation table, then the headline numbers as one JSON line (for scripts)."""
    return result_table(summary) + "\n" + json.dumps(
        {k: summary[k] for k in ("method", "test_accuracy", "test_balanced_accuracy")})


def main(argv=None) -> int:
    return run(argv, name="crest", description="CReST / CReST+ on FixMatch", config_cls=Config, train=train,
               report=report)


if __name__ == "__main__":
    raise SystemExit(main())
