"""DSD configuration: the KE training recipe (``ke.TrainConfig``) plus the pruning settings."""
from __future__ import annotations

from dataclasses import dataclass

from ..ke.config import TrainConfig, _f


@dataclass
class Config(TrainConfig):
    # DSD
    sparsity: float = _f(0.3, "fraction of every conv/linear weight pruned by magnitude for the sparse phase "
                              "(DSD's 30 %)", min=0.0, max=1.0)
    redense_lr_scale: float = _f(0.1, "learning rate of the re-dense phase / --lr (DSD: 1/10)", min=0.0)
    out: str = _f("runs/dsd", "run directory")
