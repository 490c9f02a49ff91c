"""DSD's masked steps as usually written, one tensor at a time: what ``--impl official``
trains and the benchmarks time as the baseline."""
from __future__ import annotations

import torch


def official_masked_mul_(tensors, keep_masks) -> None:
    """The sparse-phase step: ``W.mul_(mask)`` per tensor."""
    with torch.no_grad():
        for w, keep in zip(tensors, keep_masks):
            w.mul_(keep)


class OfficialMasking:
    """``prune(weights, keeps)`` after every sparse-phase step; ``redense(weights, keeps, seed)``
    once, when the re-dense phase starts: the pruned weights restart at (+)0."""

    @staticmethod
    def prune(weights, keeps) -> None:
        official_masked_mul_(weights, keeps)

    @staticmethod
    def redense(weights, keeps, seed: int) -> None:
        with torch.no_grad():
            for w, keep in zip(weights, keeps):
                w.copy_(torch.where(keep, w, torch.zeros_like(w)))
