"""The pseudo-label path of a FixMatch step with fastsmall's fused ops (``--impl fused``, the
default); ``official.py`` has the official arithmetic behind the same interface."""
from __future__ import annotations

import torch

from ... import ops as fs_ops


class FusedPseudoLabels:
    """``align(da, logits, prior, t, threshold)`` -> (label, mask) through ``fs.ops.DistAlign``;
    ``unlabelled_loss(logits, label, mask)`` = ``fs.ops.masked_cross_entropy``."""

    backend: str | None = None  # fs.ops' automatic choice: C++ on CPU, Triton on CUDA

    def align(self, da: fs_ops.DistAlign, logits: torch.Tensor, prior: torch.Tensor, temperature: float,
              threshold: float):
        out = da(logits, prior, temperature, threshold, return_probs=False, backend=self.backend)
        return out.pseudo_label, out.mask

    def unlabelled_loss(self, logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return fs_ops.masked_cross_entropy(logits, label, mask, backend=self.backend)
