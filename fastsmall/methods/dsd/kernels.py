"""DSD's masked steps with fastsmall's fused ops (``--impl fused``, the default): one
multi-tensor call per step; ``official.py`` has the per-tensor loops behind the same interface."""
from __future__ import annotations

from ...ops import ke_reinit_, masked_mul_


class FusedMasking:
    """``prune``: one ``fs.ops.masked_mul_`` over every pruned weight (after each sparse-phase
    step); ``redense``: one ``fs.ops.ke_reinit_(init="zero")`` (the pruned weights restart at (+)0)."""

    @staticmethod
    def prune(weights, keeps) -> None:
        masked_mul_(weights, keeps)

    @staticmethod
    def redense(weights, keeps, seed: int) -> None:
        ke_reinit_(weights, keeps, seed=seed, generation=3, init="zero")
