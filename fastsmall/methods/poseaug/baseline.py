"""``fastsmall poseaug-baseline``: stage 0, the estimator trained on real data only."""
from __future__ import annotations

from .__main__ import main as _main


def main(argv=None) -> int:
    return _main(argv, stage0_only=True)


if __name__ == "__main__":
    raise SystemExit(main())
