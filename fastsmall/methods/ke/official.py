"""The official Knowledge Evolution code's re-initialisation (ahmdtaha/knowledge_evolution):
what ``--impl official`` trains and the benchmarks time as the baseline.

The official layers store a bool mask per weight; at a generation boundary each layer draws
a fresh ``kaiming_uniform_(a=sqrt(5))`` tensor from torch's global generator and keeps the
fit hypothesis with ``torch.where`` -- two full-size temporaries and one launch per tensor.
Not bit-compatible with the fused ``ke_reinit_`` (its draws are counter-based), the same
distribution.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ... import reference
from ..common import derive_seed


def keep_masks(model: nn.Module, masks: dict) -> list[torch.Tensor]:
    """The bool keep mask of every tensor named in ``masks`` (what the official layers store)."""
    params = dict(model.named_parameters())
    return [reference.ke_keep_mask(params[n].shape, m, params[n].device) for n, m in masks.items()]


def official_ke_reinit_(tensors, keep_masks) -> None:
    """Per tensor: a fresh ``kaiming_uniform_(a=sqrt(5))`` tensor from torch's generator and
    ``W.data = torch.where(mask, W, R)`` with a stored bool mask."""
    with torch.no_grad():
        for w, keep in zip(tensors, keep_masks):
            r = torch.zeros_like(w)
            torch.nn.init.kaiming_uniform_(r, a=math.sqrt(5))
            w.data = torch.where(keep, w, r)


class OfficialReinit:
    """KE's generation boundary as the official loop: ``reinit(seed=, generation=, init=)``.

    ``torch_default`` (the official initialiser) draws from torch's generator seeded by
    ``(seed, generation)``; the other initialisers, which the official code does not have,
    use the per-tensor loop of ``fastsmall.reference.ke_reinit_``.
    """

    def __init__(self, model: nn.Module, masks: dict, keeps: list | None = None):
        params = dict(model.named_parameters())
        self.masks = masks
        self.tensors = [params[n] for n in masks]
        self.keeps = keep_masks(model, masks) if keeps is None else keeps

    def __call__(self, *, seed: int, generation: int, init: str = "torch_default") -> None:
        if init == "torch_default":
            torch.manual_seed(derive_seed(seed, generation, 0x4B45))
            official_ke_reinit_(self.tensors, self.keeps)
        else:
            reference.ke_reinit_(self.tensors, list(self.masks.values()), seed, generation, init)
