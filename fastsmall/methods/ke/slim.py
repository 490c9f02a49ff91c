"""KE's slim network: the fit hypothesis of a KELS split as a narrower dense network.

With KELS at split rate s_r, every conv keeps its first ``ceil(s_r * C_out)`` filters over
its first ``ceil(s_r * C_in)`` input channels (the stem all input channels, the last
linear layer all outputs). Those leading slices form a network of widths
``ceil(s_r * w)`` (VGG: its conv widths and the classifier's hidden width; its first linear
layer then reads ``ceil(s_r * 512)`` channels x 7 x 7, the leading columns of the dense
one's channel-major input): :func:`extract_slim` builds it and copies the leading slices of every
parameter and buffer (conv and linear weights, biases, BatchNorm affine parameters and
running statistics) -- no fine-tuning, as the official ``extract_slim``. The slim network
computes exactly the dense network's fit channels whenever the reset hypothesis's
cross-connections into them (``W[:k_out, k_in:]``) are zero; otherwise it drops their
contribution, which KE's repeated re-initialisation teaches the fit hypothesis to do
without.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models import VGG, DigitsCNN, ResNet
from .masks import split_masks

__all__ = ["slim_architecture", "extract_slim", "count_params", "count_macs"]


def _narrow(widths, split_rate: float) -> tuple[int, ...]:
    return tuple(math.ceil(split_rate * w) for w in widths)


def slim_architecture(model: nn.Module, split_rate: float) -> nn.Module:
    """A freshly initialised network of ``model``'s kind with widths ``ceil(split_rate * w)``."""
    if isinstance(model, DigitsCNN):
        return DigitsCNN(model.num_classes, model.in_channels, widths=_narrow(model.widths, split_rate))
    if isinstance(model, ResNet):
        return ResNet(model.layers, model.num_classes, model.in_channels, widths=_narrow(model.widths, split_rate))
    if isinstance(model, VGG):  # conv widths and the classifier's hidden width; the 7x7 pool stays
        return VGG(model.cfg, model.num_classes, model.in_channels, widths=_narrow(model.widths, split_rate),
                   hidden=math.ceil(split_rate * model.hidden), dropout=model.dropout)
    if hasattr(model, "slim_architecture"):
        return model.slim_architecture(split_rate)
    raise TypeError(f"no slim architecture for {type(model).__name__}: give it a slim_architecture(split_rate) "
                    "method building the narrower network with the same parameter names")


@torch.no_grad()
def extract_slim(model: nn.Module, split_rate: float) -> nn.Module:
    """The slim network of ``model`` (KELS at ``split_rate``): leading slices copied, nothing fine-tuned.

    Returned on ``model``'s device and dtype, in its train/eval mode. Raises if the slim
    architecture's conv/linear shapes are not the KELS fit hypothesis of ``model``.
    """
    masks = split_masks(model, split_rate, mode="kels")
    p = next(model.parameters())
    slim = slim_architecture(model, split_rate).to(device=p.device, dtype=p.dtype)
    dense = model.state_dict()
    state = {}
    for name, t in slim.state_dict().items():
        if name not in dense or dense[name].dim() != t.dim():
            raise ValueError(f"slim network entry {name!r} {tuple(t.shape)} has no counterpart in the dense network")
        src = dense[name]
        if any(n > m for n, m in zip(t.shape, src.shape)):
            raise ValueError(f"slim {name!r} {tuple(t.shape)} is wider than the dense {tuple(src.shape)}")
        if name in masks:
            kels = masks[name]
            want = (kels.k_out, src.shape[1] if kels.k_in is None else kels.k_in)
            if tuple(t.shape[:2]) != want:
                raise ValueError(f"slim {name!r} keeps {tuple(t.shape[:2])} but the KELS fit hypothesis is {want}")
        state[name] = src[tuple(slice(0, n) for n in t.shape)].clone() if t.dim() else src.clone()
    slim.load_state_dict(state)
    return slim.train(model.training)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one forward pass of one input of ``input_shape`` (C, H, W):
    convolutions and linear layers (BatchNorm, activations, pooling and additions not counted)."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        if isinstance(m, nn.modules.conv._ConvNd):
            total += output.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += output.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
