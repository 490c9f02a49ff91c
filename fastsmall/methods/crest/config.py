"""CReST / CReST+ configuration (defaults: the official code's FixMatch settings where they
fit the embedded digits-LT data; see README "CReST")."""
from __future__ import annotations

from dataclasses import dataclass

from ..common.config import (ConfigError, device_option, dist_timeout_option, fit_soft_default, impl_option,
                             keep_option, option, quiet_option, tensorboard_option, resume_option, seeds_option,
                             soft_default)
from ..common.speed import channels_last_option, compile_option, precision_option



@dataclass
class Config:
    # data
    dataset: str = option("digits-lt", "data set", choices=["digits-lt", "cifar10-lt", "cifar100-lt", "imagefolder"])
    data_dir: str | None = option(None, "folder of CIFAR's binary files or of an ImageFolder tree")
    imbalance: float = option(10.0, "gamma = N_1 / N_L of the long-tailed train set", min=1.0)
    labeled_fraction: float = option(0.1, "beta: labelled fraction of every class (ceil)", min=1e-6, max=1.0)
    test_per_class: int = option(50, "digits-LT: balanced held-out test images per class", min=1)
    n_max: int | None = option(None, "N_1, images of the most frequent class (default: as many as possible)")
    # method
    generations: int = option(6, "G, CReST generations (1 = FixMatch)", min=1)
    baseline: str = option("crest", "'fixmatch': generation 1 only, plain FixMatch", choices=["crest", "fixmatch"])
    plus: bool = option(False, "CReST+: distribution alignment with the temperature schedule")
    alpha: float = option(1 / 3, "sampling-rate power (paper's convention; the official code's 3 is 1/alpha)", min=0.0)
    t_min: float = option(0.5, "CReST+ temperature in the last generation", min=1e-6, max=1.0)
    dist_align: str = option("window", "running prior: official window of batch means, or USB's EMA",
                             choices=["window", "ema"])
    da_window: int = option(0, "batch means in the running prior's window; 0 (default): the official 128 "
                                 "at the official ratio to a generation's length, 128 x steps per generation / "
                                 "2^16, at least 1 (so 128 for an official-length run); N: exactly N", min=0)
    da_start: str = option("batches", "what the window holds before it has seen --da-window batches: only the "
                           "batch means seen so far (p~ uniform only before the first update), or the official "
                           "uniform rows", choices=["batches", "uniform"])
    da_momentum: float = option(0.999, "momentum of the EMA prior (USB's 0.999; 0: scaled to the run "
                                       "length as --da-window 0 scales the window)", min=0.0, max=0.999999)
    # FixMatch
    epochs: int = option(8, "epochs per generation", min=1)
    steps_per_epoch: int = option(32, "optimizer steps per epoch", min=1)
    batch_size: int = option(32, "labelled images per step (global)", min=1)
    mu: int = option(7, "unlabelled / labelled batch ratio", min=1)
    threshold: float = option(0.95, "confidence threshold tau", min=0.0, max=1.0)
    lambda_u: float = option(1.0, "weight of the unlabelled loss", min=0.0)
    lr: float = option(0.03, "SGD learning rate (cosine decay over a generation)", min=0.0)
    lr_schedule: str = option("fixmatch", "cosine decay: FixMatch's lr cos(7 pi k / 16K), or the official CReST "
                              "code's near-constant lr cos(pi k / 16K)", choices=["fixmatch", "official"])
    momentum: float = option(0.9, "SGD Nesterov momentum", min=0.0, max=1.0)
    weight_decay: float = option(5e-4, "weight decay of conv/linear weights", min=0.0)
    ema: float = option(0.999, "EMA decay of the evaluation / pseudo-labelling model", min=0.0, max=1.0)
    ema_schedule: str = option("ramp", "'constant': the official code's fixed decay from initialisation; 'ramp': "
                               "min(decay, (1 + k) / (10 + k)), TensorFlow's num_updates form", choices=["ramp", "constant"])
    unlabelled_stream: str = option("unlabelled", "what the unlabelled batches draw from: the unlabelled images, or "
                                    "'all' train images, labelled ones included (the official code)",
                                    choices=["unlabelled", "all"])
    model: str = option("auto", "network: digits_cnn for 8x8, wrn28_2 for 32x32", choices=["auto", "digits_cnn", "wrn28_2"])
    eval_last: int = option(soft_default(3), "report the median EMA test accuracy of this many last epochs (when "
                                             "not given, at most --epochs)", min=1)
    # run
    seed: int = option(0, "seed (splits, init, augmentation; deterministic on CPU)")
    seeds: list[int] = seeds_option()
    device: str = device_option()
    compile: bool = compile_option()
    precision: str = precision_option()
    channels_last: bool = channels_last_option()
    impl: str = impl_option("pseudo-label path (crest/kernels.py, crest/official.py)")
    out: str = option("runs/crest", "run directory")
    keep: int = keep_option()
    dist_timeout: float = dist_timeout_option()
    resume: bool = resume_option()
    quiet: bool = quiet_option()
    tensorboard: bool = tensorboard_option()

    def validate(self):
        if self.dataset != "digits-lt" and not self.data_dir:
            raise ConfigError(f"data_dir must be set for dataset {self.dataset!r}", fields=("data_dir", "dataset"))
        fit_soft_default(self, "eval_last", self.epochs, f"must be <= epochs ({self.epochs})")
        if self.eval_last > self.epochs:
            raise ConfigError(f"eval_last ({self.eval_last}) must be <= epochs ({self.epochs})",
                              fields=("eval_last", "epochs"))

    @property
    def num_generations(self) -> int:
        return 1 if self.baseline == "fixmatch" else self.generations
