"""``python -m fastsmall.methods.crest`` (also ``fastsmall crest``; ``torchrun ... -m fastsmall.methods.crest``)."""
from __future__ import annotations

import argparse
import json
import sys

from ..common import add_config_arguments, config_from_args
from .config import Config
from .train import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastsmall crest", description="CReST / CReST+ on FixMatch")
    add_config_arguments(parser, Config)
    cfg = config_from_args(Config, parser.parse_args(sys.argv[1:] if argv is None else argv))
    summary = train(cfg)
    print(json.dumps({k: summary[k] for k in ("method", "test_accuracy", "test_balanced_accuracy")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
