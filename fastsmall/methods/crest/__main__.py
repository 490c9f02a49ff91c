"""``python -m fastsmall.methods.crest`` (also ``fastsmall crest``; ``torchrun ... -m fastsmall.methods.crest``)."""
from __future__ import annotations

import json

from ..common.cli import run
from .config import Config
from .train import train


def report(summary: dict, args=None) -> str:
    return json.dumps({k: summary[k] for k in ("method", "test_accuracy", "test_balanced_accuracy")})


def main(argv=None) -> int:
    return run(argv, name="crest", description="CReST / CReST+ on FixMatch", config_cls=Config, train=train,
               report=report)


if __name__ == "__main__":
    raise SystemExit(main())
