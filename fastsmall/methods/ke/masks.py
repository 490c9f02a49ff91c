"""Knowledge Evolution (Taha et al., CVPR 2021): split a network into a fit and a reset
hypothesis, re-initialise the reset hypothesis every generation.

    masks = split_masks(model, split_rate=0.5, mode="kels")   # {parameter name: mask}
    for generation in range(1, N):
        reinitialize_(model, masks, seed=0, generation=generation)   # one fused call
        ... train ...

Masks are ``fastsmall.ops.KELS`` / ``WELS`` objects (no mask tensors are stored), for
the weights of every convolution and linear layer; biases and BatchNorm get no mask and
are never reset.
"""
from __future__ import annotations

import math

from torch import nn

from ... import masks as km
from ...ops import KELS, WELS, ke_reinit_
from ..common.layers import prunable_layers, weight_name

__all__ = ["split_masks", "reinitialize_", "prunable_layers"]


def _layer_seed(seed: int, index: int) -> int:
    """A distinct WELS seed per layer, derived from the user's seed (int64)."""
    k0, k1 = km.stream_key(0x4C415952, *km.split64(seed), index)  # "LAYR"
    v = (k1 << 32) | k0
    return v - 2 ** 64 if v >= 2 ** 63 else v


def split_masks(model: nn.Module, split_rate: float, mode: str = "kels", seed: int = 0) -> dict:
    """The fit-hypothesis masks of KE, ``{parameter name: KELS | WELS}``, in module order.

    ``mode="kels"`` (kernel-level, the official code's rule): a conv/linear weight
    ``[C_out, C_in, ...]`` keeps ``W[:ceil(s C_out), :ceil(s C_in)]``, s = ``split_rate``
    (``math.ceil(split_rate * C)`` as the official code computes it), except that the
    stem (the model's first convolution, by module order) keeps all its input channels
    and the last linear layer keeps all its outputs. Residual downsample 1x1 convs split
    like any conv. For ResNet-18 at s = 0.5: conv1 keeps 32x3x7x7, layer1 convs
    32x32x3x3, fc ``[:, :256]``.

    A linear layer fed a flattened ``C x H x W`` feature map (VGG's first classifier layer:
    512 x 7 x 7, channel-major) splits its input by channels: the model names it in its
    ``kels_inner`` attribute, ``{module name: H * W}``, and the layer keeps the leading
    ``ceil(s C)`` channels' ``H * W`` columns each, ``k_in = ceil(s C) * H * W`` -- the input
    the slim network's narrower feature map gives it. For VGG11-BN at s = 0.5:
    ``features.0`` keeps 32x3x3x3, ``classifier.0`` ``[:2048, :256*49]``, ``classifier.3``
    ``[:2048, :2048]``, ``classifier.6`` ``[:, :2048]``. (The official linear layer without
    ``in_channels_order`` would keep ``ceil(s * 25088)`` columns: the same whenever
    ``s * 512`` is a whole number, as at s = 0.5, otherwise part of a channel's cells.)

    ``mode="wels"`` (weight-level): every conv/linear weight keeps each weight with
    probability ``split_rate``: ``WELS(split_rate, s_l)`` with a per-layer seed ``s_l``
    derived from ``seed`` and the layer's index, fixed for all generations.
    """
    if isinstance(split_rate, bool) or not isinstance(split_rate, (int, float)) or not 0.0 < split_rate <= 1.0:
        raise ValueError(f"split_rate must be a float in (0, 1], got {split_rate!r}")
    if mode not in ("kels", "wels"):
        raise ValueError(f"mode must be 'kels' or 'wels', got {mode!r}")
    seed = km.check_int64(seed, "seed")
    layers = prunable_layers(model)
    convs = [m for _, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [m for _, m in layers if isinstance(m, nn.Linear)]
    stem = convs[0] if convs else None
    last = linears[-1] if linears else None
    inner = _kels_inner(model, {name for name, _ in layers})
    masks = {}
    for index, (name, m) in enumerate(layers):
        if mode == "wels":
            masks[weight_name(name)] = WELS(float(split_rate), _layer_seed(seed, index))
            continue
        c_out, c_in = m.weight.shape[0], m.weight.shape[1]
        cells = inner.get(name, 1)
        if c_in % cells:
            raise ValueError(f"kels_inner[{name!r}] = {cells} does not divide the layer's {c_in} inputs")
        k_out = c_out if m is last else math.ceil(split_rate * c_out)
        k_in = c_in if m is stem else math.ceil(split_rate * (c_in // cells)) * cells
        masks[weight_name(name)] = KELS(k_out, k_in)
    return masks


def _kels_inner(model: nn.Module, layer_names: set) -> dict:
    """``model.kels_inner``: {layer name: input columns per input channel} (default 1 everywhere)."""
    inner = dict(getattr(model, "kels_inner", None) or {})
    for name, cells in inner.items():
        if name not in layer_names:
            raise ValueError(f"kels_inner names {name!r}, which is not a conv or linear layer of the model")
        if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
            raise ValueError(f"kels_inner[{name!r}] must be a positive int, got {cells!r}")
    return inner


def reinitialize_(model: nn.Module, masks: dict, seed: int, generation: int, init: str = "torch_default", *,
                  backend: str | None = None) -> None:
    """Re-initialise the reset hypothesis of ``model`` in place (one ``fastsmall.ops.ke_reinit_`` call).

    ``masks`` as from :func:`split_masks` (or any ``{parameter name: mask}``); tensor
    ``i`` of the call is the ``i``-th entry of ``masks``, so the draws are fixed by
    ``(seed, generation)`` and the order of ``masks``.
    """
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    if missing:
        raise KeyError(f"masks name parameters the model does not have: {missing}")
    ke_reinit_([params[n] for n in masks], list(masks.values()), seed, generation, init, backend=backend)
