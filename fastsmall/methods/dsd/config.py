"""DSD configuration: the KE training recipe (``common.generations.TrainConfig``) plus the pruning settings."""
from __future__ import annotations

from dataclasses import dataclass

from ..common.config import option
from ..common.generations import TrainConfig


@dataclass
class Config(TrainConfig):
    # DSD
    sparsity: float = option(0.3, "fraction of every conv/linear weight pruned by magnitude for the sparse phase "
                                  "(DSD's 30 %)", min=0.0, max=1.0)
    redense_lr_scale: float = option(0.1, "learning rate of the re-dense phase / --lr (DSD: 1/10)", min=0.0)
    out: str = option("runs/dsd", "run directory")
