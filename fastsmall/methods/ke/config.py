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
from ..common.paper_datasets import PAPER_DATASETS, WITH_VALIDATION

__all__ = ["TrainConfig", "Config"]



@dataclass
class Config(TrainConfig):
    # data (redefined from TrainConfig, in place: KE also reads the paper's five data sets in their
    # published layouts, fastsmall.methods.common.paper_datasets; DSD keeps TrainConfig's choices)
    dataset: str = option("digits-small", "data set: scikit-learn's bundled digits, an ImageFolder tree, or one of "
                                          "the KE paper's data sets in its published layout in --data (cub200: "
                                          "CUB_200_2011/, flowers102, aircraft: fgvc-aircraft-2013b/, indoor67, "
                                          "dogs); those use their own train / test split",
                          choices=["digits-small", "imagefolder", *PAPER_DATASETS])
    data: str | None = option(None, "ImageFolder root: <data>/train + <data>/test (or val) class folders, or one "
                                    "<data>/<class>/ tree from which --test-per-class images per class are held "
                                    "out; or the folder of a paper data set (--dataset cub200 ... dogs)")
    check_counts: bool = option(True, "paper data sets (cub200, flowers102, aircraft, indoor67, dogs): stop with an "
                                      "error unless the train / test image and class counts are the published "
                                      "ones; --no-check-counts accepts a partial or modified copy")
    train_with_val: bool = option(False, "flowers102, aircraft: train on the published train + validation splits "
                                         "(2,040 / 6,667 images) instead of train only (1,020 / 3,334; the default: "
                                         "whether the KE paper used the validation split is not in its released code)")
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
        if self.dataset in PAPER_DATASETS and not self.data:
            raise ConfigError(f"data must be set for dataset {self.dataset!r} (the folder holding it)",
                              fields=("data", "dataset"))
        if self.train_with_val and self.dataset not in WITH_VALIDATION:
            raise ConfigError(f"train_with_val is for the data sets that publish a validation split "
                              f"({', '.join(WITH_VALIDATION)}), not {self.dataset!r}", fields=("train_with_val", "dataset"))
        if self.split_rate >= 1.0 and self.mode == "ke" and self.generations > 1:
            raise ConfigError("split_rate must be < 1.0 for mode 'ke' (a fit hypothesis of everything resets nothing)",
                              fields=("split_rate", "mode"))

    def schedule_epochs(self) -> int:
        return self.epochs * self.generations if self.mode == "long" else self.epochs
