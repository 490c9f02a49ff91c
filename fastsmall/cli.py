"""The ``fastsmall`` command: one sub-command per job.

    fastsmall info      versions, build and usable backends
    fastsmall demo      the main job on embedded data
    fastsmall crest     CReST / CReST+ / FixMatch
    fastsmall ke        Knowledge Evolution (KELS / WELS) and its controls
    fastsmall dsd       Dense-Sparse-Dense
    fastsmall poseaug   PoseAug: 3D pose estimation with a learnable augmentor
    fastsmall poseaug-baseline   PoseAug's stage 0: the estimator on real data only
"""
from __future__ import annotations

import argparse
import importlib
import sys


#: sub-command -> (one-line description, module whose ``main(argv)`` runs it)
COMMANDS = {
    "info": ("versions, build flags and usable backends", "fastsmall.info"),
    "demo": ("the main job on embedded data (generated poses)", "fastsmall.demo"),
    "crest": ("CReST / CReST+ / FixMatch training (fastsmall crest --help)", "fastsmall.methods.crest.__main__"),
    "ke": ("Knowledge Evolution training (fastsmall ke --help)", "fastsmall.methods.ke.__main__"),
    "dsd": ("Dense-Sparse-Dense training (fastsmall dsd --help)", "fastsmall.methods.dsd.__main__"),
    "poseaug": ("PoseAug training (fastsmall poseaug --help)", "fastsmall.methods.poseaug.__main__"),
    "poseaug-baseline": ("PoseAug stage 0: estimator on real data only", "fastsmall.methods.poseaug.baseline"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="fastsmall", description="fastsmall: fused ops for learning from small data")
    parser.add_argument("--version", action="store_true", help="print fastsmall's version and exit")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[0]}" for k, v in COMMANDS.items()))
    if argv and argv[0] == "--version":
        from . import __version__
        print(f"fastsmall {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][1])
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
