"""KE's generation boundary with fastsmall's fused op (``--impl fused``, the default);
``official.py`` has the official loop behind the same interface."""
from __future__ import annotations

from torch import nn

from .masks import reinitialize_


class FusedReinit:
    """``reinit(seed=, generation=, init=)``: one ``fs.ops.ke_reinit_`` call over every masked
    weight (draws keyed by (seed, generation, tensor index); no mask tensors)."""

    def __init__(self, model: nn.Module, masks: dict):
        self.model, self.masks = model, masks

    def __call__(self, *, seed: int, generation: int, init: str = "torch_default") -> None:
        reinitialize_(self.model, self.masks, seed, generation, init)
