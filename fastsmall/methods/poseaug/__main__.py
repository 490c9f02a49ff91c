"""``python -m fastsmall.methods.poseaug`` (also ``fastsmall poseaug``; under torchrun too)."""
from __future__ import annotations

import argparse
import json
import sys

from ..common import CheckpointError, add_config_arguments, config_from_args
from .config import Config
from .train import train


def result_table(summary: dict) -> str:
    rows = [f"{'set':<22}{'':>9}{'MPJPE':>9}{'P-MPJPE':>9}{'PCK':>7}{'AUC':>7}"]
    for label, block in (("before", summary.get("initial")), ("last", summary.get("last")),
                         ("best*", summary.get("best"))):
        for name, m in (block or {}).items():
            rows.append(f"{name:<22}{label:>9}{m['mpjpe']:>9.1f}{m['p_mpjpe']:>9.1f}{m['pck']:>7.1f}{m['auc']:>7.1f}")
    rows.append("* best epoch picked on the test set itself, as the official summary does (optimistic)")
    return "\n".join(rows)


def main(argv=None, *, stage0_only: bool = False) -> int:
    prog = "fastsmall poseaug-baseline" if stage0_only else "fastsmall poseaug"
    description = ("Stage 0: train the 3D pose estimator on real data only, for --epochs epochs; its weights go to "
                   "OUT/checkpoints/estimator.pt for `fastsmall poseaug --pretrained`." if stage0_only else
                   "PoseAug: train a 3D pose estimator with the learnable augmentor (released training loop).")
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, Config)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if stage0_only:
        args.augment, args.baseline_epochs, args.pretrained = False, args.epochs, None
    cfg = config_from_args(Config, args)
    try:
        summary = train(cfg, stage0_only=stage0_only)
    except (FileNotFoundError, KeyError, ValueError, CheckpointError) as exc:
        # bad data files / checkpoints: the message names the file and the key, no traceback
        parser.exit(2, f"{prog}: error: {exc}\n")
    print(json.dumps(summary) if args.json else result_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
