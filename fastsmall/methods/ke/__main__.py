"""``python -m fastsmall.methods.ke`` (also ``fastsmall ke``; ``torchrun ... -m fastsmall.methods.ke``)."""
from __future__ import annotations

import argparse
import json
import sys

from ..common import add_config_arguments, config_from_args
from .config import Config
from .train import train


def result_table(summary: dict) -> str:
    """The per-generation table of a KE run (dense / slim accuracy) and the sizes."""
    lines = [f"{'generation':<12}{'epochs':>8}{'dense acc':>11}{'slim acc':>10}"]
    for g in summary["per_generation"]:
        slim = g["slim_test_accuracy"]
        lines.append(f"{g['generation']:<12}{g['epochs_trained']:>8}{g['test_accuracy']:>11.3f}"
                     f"{(f'{slim:.3f}' if slim is not None else '-'):>10}")
    d, s = summary["dense"], summary["slim"]
    sizes = f"dense: {d['params']:,} params, {d['macs']:,} MACs"
    if s:
        sizes += (f" | slim: {s['params']:,} params ({s['params'] / d['params']:.1%}), "
                  f"{s['macs']:,} MACs ({s['macs'] / d['macs']:.1%})")
    lines.append(sizes + f" | fit-hypothesis sparsity {summary['fit_sparsity']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastsmall ke", description="Knowledge Evolution (KELS / WELS) and its "
                                     "controls")
    add_config_arguments(parser, Config)
    cfg = config_from_args(Config, parser.parse_args(sys.argv[1:] if argv is None else argv))
    summary = train(cfg)
    print(result_table(summary))
    print(json.dumps({k: summary[k] for k in ("method", "test_accuracy", "slim_test_accuracy",
                                              "n1_test_accuracy")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
