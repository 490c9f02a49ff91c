"""The layers that masked training (Knowledge Evolution, DSD) acts on."""
from __future__ import annotations

from torch import nn


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every convolution and linear layer, in ``model.modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def weight_name(module_name: str) -> str:
    """The parameter name of a layer's weight (``named_parameters()`` spelling)."""
    return f"{module_name}.weight" if module_name else "weight"
