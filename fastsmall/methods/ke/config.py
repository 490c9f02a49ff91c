"""Knowledge Evolution configuration.

``TrainConfig`` (``fastsmall.methods.common.generations``) holds what every run of this
family needs (data, network, the official KE training recipe, run options) and is shared
with DSD (``fastsmall.methods.dsd``); ``Config`` adds the KE method and its controls. Defaults follow the official code
(ahmdtaha/knowledge_evolution) where they fit a small data set: SGD momentum 0.9,
weight decay 1e-4 on every parameter, label smoothing 0.1, cosine LR with linear
warm-up, stepped per epoch, restarted every generation, kaiming_normal (fan_in, ReLU)
initialisation, re-initialisation with PyTorch's default layer init, batch 32, lr 0.256
and 5 warm-up epochs. Only the epochs per generation differ: 40 (chosen on digits-small,
where a single generation's accuracy levels off by then) instead of the official 200 for
Flower-102 / CUB-200 with a ResNet-18; see README "Knowledge Evolution".
"""
from __future__ import annotations

from dataclasses import dataclass

from ...masks import INITS
from ..common.config import ConfigError, option
from ..common.generations import TrainConfig

__all__ = ["TrainConfig", "Config"]



@dataclass
class Config(TrainConfig):
    # Knowledge Evolution
    mode: str = option("ke", "ke: re-initialise the reset hypothesis every generation; controls at equal compute: "
                             "restart (each generation only restarts the optimizer and LR schedule), long (one "
                             "schedule over generations x epochs, evaluated every --epochs)",
                       choices=["ke", "restart", "long"])
    generations: int = option(10, "N: generations (1 = plain training)", min=1)
    split: str = option("kels", "fit hypothesis: kels (leading filters x input channels) or wels (random weights)",
                        choices=["kels", "wels"])
    split_rate: float = option(0.5, "s_r: fraction of filters/channels (kels) or weights (wels) in the fit hypothesis",
                               min=1e-6, max=1.0)
    reinit: str = option("torch_default", "re-initialisation of the reset hypothesis (official: PyTorch's default "
                                          "layer init)", choices=list(INITS))

    def validate(self):
        super().validate()
        if self.split_rate >= 1.0 and self.mode == "ke" and self.generations > 1:
            raise ConfigError("split_rate must be < 1.0 for mode 'ke' (a fit hypothesis of everything resets nothing)")

    def schedule_epochs(self) -> int:
        return self.epochs * self.generations if self.mode == "long" else self.epochs
