"""``python -m fastsmall.methods.dsd`` (also ``fastsmall dsd``; ``torchrun ... -m fastsmall.methods.dsd``)."""
from __future__ import annotations

import argparse
import json
import sys

from ..common import add_config_arguments, config_from_args
from .config import Config
from .train import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastsmall dsd", description="Dense-Sparse-Dense training")
    add_config_arguments(parser, Config)
    cfg = config_from_args(Config, parser.parse_args(sys.argv[1:] if argv is None else argv))
    summary = train(cfg)
    print(f"{'phase':<10}{'epochs':>8}{'test acc':>10}{'zero weights':>14}")
    for p in summary["per_phase"]:
        print(f"{p['phase']:<10}{p['epochs_trained']:>8}{p['test_accuracy']:>10.3f}{p['weight_sparsity']:>14.3f}")
    print(json.dumps({k: summary[k] for k in ("method", "test_accuracy", "dense_test_accuracy",
                                              "sparse_test_accuracy")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
