"""Knowledge Evolution configuration.

``TrainConfig`` holds what every run of this family needs (data, network, the official
KE training recipe, run options) and is shared with DSD (``fastsmall.methods.dsd``);
``Config`` adds the KE method and its controls. Defaults follow the official code
(ahmdtaha/knowledge_evolution) where they fit a small data set: SGD momentum 0.9,
weight decay 1e-4 on every parameter, label smoothing 0.1, cosine LR with linear
warm-up, stepped per epoch, restarted every generation, kaiming_normal (fan_in, ReLU)
initialisation, re-initialisation with PyTorch's default layer init, batch 32, lr 0.256
and 5 warm-up epochs. Only the epochs per generation differ: 40 (chosen on digits-small,
where a single generation's accuracy levels off by then) instead of the official 200 for
Flower-102 / CUB-200 with a ResNet-18; see README "Knowledge Evolution".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...masks import INITS
from ..common import ConfigError


def _f(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    # data
    dataset: str = _f("digits-small", "data set: scikit-learn's bundled digits, or an ImageFolder tree",
                      choices=["digits-small", "imagefolder"])
    data: str | None = _f(None, "ImageFolder root: <data>/train + <data>/test (or val) class folders, or one "
                                "<data>/<class>/ tree from which --test-per-class images per class are held out")
    per_class: int | None = _f(None, "training images per class, drawn by --seed (default: 10 for digits-small, "
                                     "all for imagefolder)", min=1)
    test_per_class: int = _f(50, "held-out test images per class, the same for every seed (digits-small; "
                                 "imagefolder without a test/ folder)", min=1)
    image_size: int = _f(224, "imagefolder: training crop / test centre-crop size", min=8)
    augment: bool = _f(True, "training augmentation: +-1 pixel shifts (digits); random-resized crop + "
                             "horizontal flip (imagefolder)")
    # network
    model: str = _f("auto", "network: digits_cnn for digits-small, resnet18 for imagefolder",
                    choices=["auto", "digits_cnn", "resnet18"])
    width: int = _f(32, "digits_cnn base width (conv widths w, w, 2w, 2w)", min=1)
    # training, per generation
    epochs: int = _f(40, "E: epochs per generation", min=1)
    batch_size: int = _f(32, "images per optimizer step (global; the last partial batch of an epoch is dropped)",
                         min=1)
    lr: float = _f(0.256, "SGD peak learning rate (the official value)", min=0.0)
    warmup_epochs: int = _f(5, "linear warm-up epochs of the cosine schedule (the official value)", min=0)
    momentum: float = _f(0.9, "SGD momentum (not Nesterov, as the official code)", min=0.0, max=1.0)
    weight_decay: float = _f(1e-4, "weight decay of every parameter (as the official code)", min=0.0)
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy", min=0.0, max=1.0)
    # run
    seed: int = _f(0, "seed (training subset, initialisation, re-initialisation, batches, augmentation)")
    device: str = _f("cpu", "cpu or cuda")
    compile: bool = _f(False, "torch.compile the model")
    impl: str = _f("fused", "masked ops: fastsmall's fused ops, or the official per-tensor loops "
                            "(fastsmall/reference.py)", choices=["fused", "reference"])
    out: str = _f("runs/ke", "run directory")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")
    quiet: bool = _f(False, "no progress bars")

    def validate(self):
        if self.dataset == "imagefolder" and not self.data:
            raise ConfigError("data must be set for dataset 'imagefolder' (an ImageFolder root)")
        if self.warmup_epochs >= self.schedule_epochs():
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be < the epochs of one LR schedule "
                              f"({self.schedule_epochs()})")

    def schedule_epochs(self) -> int:
        return self.epochs

    @property
    def model_name(self) -> str:
        if self.model != "auto":
            return self.model
        return "digits_cnn" if self.dataset == "digits-small" else "resnet18"


@dataclass
class Config(TrainConfig):
    # Knowledge Evolution
    mode: str = _f("ke", "ke: re-initialise the reset hypothesis every generation; controls at equal compute: "
                         "restart (each generation only restarts the optimizer and LR schedule), long (one "
                         "schedule over generations x epochs, evaluated every --epochs)",
                   choices=["ke", "restart", "long"])
    generations: int = _f(10, "N: generations (1 = plain training)", min=1)
    split: str = _f("kels", "fit hypothesis: kels (leading filters x input channels) or wels (random weights)",
                    choices=["kels", "wels"])
    split_rate: float = _f(0.5, "s_r: fraction of filters/channels (kels) or weights (wels) in the fit hypothesis",
                           min=1e-6, max=1.0)
    reinit: str = _f("torch_default", "re-initialisation of the reset hypothesis (official: PyTorch's default "
                                      "layer init)", choices=list(INITS))

    def validate(self):
        super().validate()
        if self.split_rate >= 1.0 and self.mode == "ke" and self.generations > 1:
            raise ConfigError("split_rate must be < 1.0 for mode 'ke' (a fit hypothesis of everything resets nothing)")

    def schedule_epochs(self) -> int:
        return self.epochs * self.generations if self.mode == "long" else self.epochs
