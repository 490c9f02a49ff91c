"""``python -m fastsmall.methods.ke`` (also ``fastsmall ke``; ``torchrun ... -m fastsmall.methods.ke``)."""
from __future__ import annotations

import json

from ..common.cli import run
from .config import Config
from .train import train


def result_table(summary: dict) -> str:
    """The per-generation table of a KE run (dense / slim accuracy; 'fit only': the dense network with
    the reset hypothesis zeroed, DSD-style) and the sizes."""
    lines = [f"{'generation':<12}{'epochs':>8}{'dense acc':>11}{'slim acc':>10}{'fit only':>10}"]
    for g in summary["per_generation"]:
        slim, fit = g["slim_test_accuracy"], g.get("fit_only_test_accuracy")
        lines.append(f"{g['generation']:<12}{g['epochs_trained']:>8}{g['test_accuracy']:>11.3f}"
                     f"{(f'{slim:.3f}' if slim is not None else '-'):>10}"
                     f"{(f'{fit:.3f}' if fit is not None else '-'):>10}")
    d, s = summary["dense"], summary["slim"]
    sizes = f"dense: {d['params']:,} params, {d['macs']:,} MACs"
    if s:
        sizes += (f" | slim: {s['params']:,} params ({s['params'] / d['params']:.1%}), "
                  f"{s['macs']:,} MACs ({s['macs'] / d['macs']:.1%})")
    lines.append(sizes + f" | fit-hypothesis sparsity {summary['fit_sparsity']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    def report(summary: dict, args) -> str:
        return result_table(summary) + "\n" + json.dumps(
            {k: summary[k] for k in ("method", "test_accuracy", "slim_test_accuracy", "n1_test_accuracy")})

    return run(argv, name="ke", description="Knowledge Evolution (KELS / WELS) and its controls", config_cls=Config,
               train=train, report=report)


if __name__ == "__main__":
    raise SystemExit(main())
