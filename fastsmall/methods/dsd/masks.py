"""Dense-Sparse-Dense training (Han et al., ICLR 2017): magnitude pruning masks and the
sparse-phase step.

    masks = magnitude_masks(model, sparsity=0.3)     # {parameter name: bool mask}
    for batch in loader:                             # sparse phase
        ... loss.backward(); optimizer.step()
        apply_masks_(model, masks)                   # one fused masked_mul_ call
    ke_reinit_(pruned weights, masks, seed, init="zero")   # re-dense start: pruned weights from 0
"""
from __future__ import annotations

import torch
from torch import nn

from ...ops import masked_mul_
from ..common.layers import prunable_layers, weight_name

__all__ = ["magnitude_masks", "apply_masks_"]


def _check_sparsity(s, name: str) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {s!r}")
    return float(s)


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity) -> dict:
    """Per-layer magnitude pruning masks ``{parameter name: bool tensor}`` (True = kept).

    For the weight of every convolution and linear layer (module order), the
    ``round(sparsity * numel)`` entries of smallest ``|w|`` are pruned (exactly that many;
    ties broken by ``torch.topk``). ``sparsity`` is a float in [0, 1] or a
    ``{parameter name: float}`` dict (layers not named are not pruned and get no mask).
    Biases and BatchNorm are never pruned.
    """
    per_layer = isinstance(sparsity, dict)
    if not per_layer:
        sparsity = _check_sparsity(sparsity, "sparsity")
    masks = {}
    for name, m in prunable_layers(model):
        pname = weight_name(name)
        if per_layer:
            if pname not in sparsity:
                continue
            s = _check_sparsity(sparsity[pname], f"sparsity[{pname!r}]")
        else:
            s = sparsity
        w = m.weight
        k = round(s * w.numel())
        keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
        if k > 0:
            keep[torch.topk(w.detach().abs().flatten(), k, largest=False, sorted=False).indices] = False
        masks[pname] = keep.view(w.shape)
    if per_layer:
        unknown = set(sparsity) - set(masks)
        if unknown:
            raise KeyError(f"sparsity names parameters that are not conv/linear weights of the model: {sorted(unknown)}")
    return masks


def apply_masks_(model: nn.Module, masks: dict, *, backend: str | None = None) -> None:
    """DSD's sparse-phase step: zero the pruned weights of ``model`` in place (one fused call)."""
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    if missing:
        raise KeyError(f"masks name parameters the model does not have: {missing}")
    masked_mul_([params[n] for n in masks], list(masks.values()), backend=backend)
