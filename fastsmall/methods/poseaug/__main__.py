"""``python -m fastsmall.methods.poseaug`` (also ``fastsmall poseaug``; under torchrun too)."""
from __future__ import annotations

import json

from ..common.cli import run
from .config import Config
from .diagnostics import diagnostics_table
from .train import train


def result_table(summary: dict) -> str:
    rows = [f"{'set':<22}{'':>9}{'MPJPE':>9}{'P-MPJPE':>9}{'PCK':>7}{'AUC':>7}"]
    for label, block in (("before", summary.get("initial")), ("last", summary.get("last")),
                         ("best*", summary.get("best"))):
        for name, m in (block or {}).items():
            rows.append(f"{name:<22}{label:>9}{m['mpjpe']:>9.1f}{m['p_mpjpe']:>9.1f}{m['pck']:>7.1f}{m['auc']:>7.1f}")
    rows.append("* best epoch picked on the test set itself, as the official summary does (optimistic)")
    if summary.get("augmentor_last"):
        rows += ["", "augmentor diagnostics, last epoch (every epoch: metrics.jsonl, plots/augmentor.png):",
                 diagnostics_table([{"type": "epoch", "epoch": summary["epochs"] - 1, **summary["augmentor_last"]}])]
    return "\n".join(rows)


def main(argv=None, *, stage0_only: bool = False) -> int:
    def add_arguments(parser):
        parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")

    def stage0(args):  # the estimator on real data only, for --epochs epochs
        args.augment, args.baseline_epochs, args.pretrained = False, args.epochs, None

    if stage0_only:
        description = ("Stage 0: train the 3D pose estimator on real data only, for --epochs epochs; its weights go "
                       "to OUT/checkpoints/estimator.pt for `fastsmall poseaug --pretrained`.")
    else:
        description = "PoseAug: train a 3D pose estimator with the learnable augmentor (released training loop)."
    return run(argv, name="poseaug-baseline" if stage0_only else "poseaug", description=description,
               config_cls=Config, train=lambda cfg: train(cfg, stage0_only=stage0_only),
               report=lambda summary, args: json.dumps(summary) if args.json else result_table(summary),
               add_arguments=add_arguments, adjust=stage0 if stage0_only else None)


if __name__ == "__main__":
    raise SystemExit(main())
