"""Training a classifier in generations: what Knowledge Evolution and DSD share.

``TrainConfig`` is the official KE training recipe (data, network, SGD, warm-up + cosine LR
per generation, run options); ``GenerationTrainer`` trains ``num_generations()`` generations
of ``cfg.epochs`` epochs each on the shared :class:`~.trainer.Trainer`, with hooks at
generation boundaries and after optimizer steps::

    build the network (kaiming_normal), a fresh SGD optimizer
    for generation g = 1 .. G:
        begin_generation()           # g >= 2: KE re-initialises, DSD prunes / re-densifies
        for epoch e = 1 .. E:
            for each batch: SGD step; after_step()    # DSD's sparse phase re-applies its mask
        evaluate

Every epoch reseeds its batch order and augmentation from (seed, generation, epoch, rank),
so a resumed epoch replays exactly. Under torchrun: DistributedDataParallel, each rank takes
its share of every global batch, metrics are reduced over ranks, rank 0 writes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import build as build_model
from .config import (ConfigError, device_option, dist_timeout_option, fit_soft_default, impl_option, keep_option,
                     option, quiet_option, tensorboard_option, resume_option, seeds_option, soft_default)
from .speed import (StepSpeed, channels_last_option, compile_option, loss_precision, precision_option, restart_sgd_,
                    set_lr)
from .image_data import load_data
from .layers import prunable_layers
from .rng import derive_seed
from .trainer import Trainer


@dataclass
class TrainConfig:
    # data
    dataset: str = option("digits-small", "data set: scikit-learn's bundled digits, or an ImageFolder tree",
                          choices=["digits-small", "imagefolder"])
    data: str | None = option(None, "ImageFolder root: <data>/train + <data>/test (or val) class folders, or one "
                                    "<data>/<class>/ tree from which --test-per-class images per class are held out")
    per_class: int | None = option(None, "training images per class, drawn by --seed (default: 10 for digits-small, "
                                         "all for imagefolder)", min=1)
    test_per_class: int = option(50, "held-out test images per class, the same for every seed (digits-small; "
                                     "imagefolder without a test/ folder)", min=1)
    image_size: int = option(224, "imagefolder: training crop / test centre-crop size", min=8)
    augment: bool = option(True, "training augmentation: +-1 pixel shifts (digits); random-resized crop + "
                                 "horizontal flip (imagefolder)")
    # network
    model: str = option("auto", "network: digits_cnn (a small CNN, any channels and size) for digits-small and "
                                "images of --image-size <= 64, resnet18 otherwise; vgg11_bn (VGG11-BN, the KE "
                                "paper's CUB-200 network, images of at least 32 px) only when named",
                        choices=["auto", "digits_cnn", "resnet18", "vgg11_bn"])
    width: int = option(32, "digits_cnn base width (conv widths w, w, 2w, 2w)", min=1)
    # training, per generation
    epochs: int = option(40, "E: epochs per generation", min=1)
    batch_size: int = option(32, "images per optimizer step (global; the last partial batch of an epoch is dropped)",
                             min=1)
    lr: float = option(0.256, "SGD peak learning rate (the official value)", min=0.0)
    warmup_epochs: int = option(soft_default(5), "linear warm-up epochs of the cosine schedule (the official 5; when "
                                                 "not given and a schedule has no more epochs than that: one "
                                                 "less than its epochs)", min=0)
    momentum: float = option(0.9, "SGD momentum (not Nesterov, as the official code)", min=0.0, max=1.0)
    weight_decay: float = option(1e-4, "weight decay of every parameter (as the official code)", min=0.0)
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", min=0.0, max=1.0)
    # run
    seed: int = option(0, "seed (training subset, initialisation, re-initialisation, batches, augmentation)")
    seeds: list[int] = seeds_option()
    device: str = device_option()
    compile: bool = compile_option()
    precision: str = precision_option()
    channels_last: bool = channels_last_option()
    impl: str = impl_option("masked ops (ke/ and dsd/ kernels.py, official.py: the official per-tensor loops)")
    out: str = option("runs/ke", "run directory")
    keep: int = keep_option()
    dist_timeout: float = dist_timeout_option()
    resume: bool = resume_option()
    quiet: bool = quiet_option()
    tensorboard: bool = tensorboard_option()

    def validate(self):
        if self.dataset == "imagefolder" and not self.data:
            raise ConfigError("data must be set for dataset 'imagefolder' (an ImageFolder root)",
                              fields=("data", "dataset"))
        if self.model == "vgg11_bn":
            if self.dataset == "digits-small" or self.image_size < VGG_MIN_IMAGE:
                got = ("dataset 'digits-small' (8x8 images)" if self.dataset == "digits-small"
                       else f"image_size {self.image_size}")
                raise ConfigError(f"model 'vgg11_bn' needs images of at least {VGG_MIN_IMAGE} px (five 2x2 "
                                  f"max-pools), got {got}", fields=("model", "image_size", "dataset"))
            if self.seeds:  # (the stacked step is one vmap, where a random op is an error)
                raise ConfigError("model 'vgg11_bn' has dropout, which draws from torch's generator: seeds cannot "
                                  "stack its replicas in one step; give one seed per run",
                                  fields=("model", "seeds", "seed"))
        total = self.schedule_epochs()
        schedule = "epochs" if total == self.epochs else "epochs x generations"
        fit_soft_default(self, "warmup_epochs", total - 1, f"must be < {schedule} ({total})")
        if self.warmup_epochs >= total:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be < {schedule} ({total}), the length of "
                              f"one LR schedule", fields=("warmup_epochs", "epochs", "generations"))

    def schedule_epochs(self) -> int:
        return self.epochs

    @property
    def model_name(self) -> str:
        if self.model != "auto":
            return self.model
        # a 4-conv CNN for small images (ResNet-18's stride-32 stem leaves a 28-px image 1 px wide)
        small = self.dataset == "digits-small" or (self.image_size is not None and self.image_size <= SMALL_IMAGE)
        return "digits_cnn" if small else "resnet18"


#: --model auto picks the small CNN up to this --image-size
SMALL_IMAGE = 64
#: the smallest image side vgg11_bn takes (2 ** its five max-pools)
VGG_MIN_IMAGE = 32


@dataclass
class EpochPlan:
    perm: torch.Tensor  # the epoch's order of the training images (shared by all ranks)
    batch: int  # images per global step
    steps: int
    augment: torch.Generator
    lr: float


def kaiming_init_(model: nn.Module) -> None:
    """Generation 1: kaiming_normal (fan_in, ReLU) for every conv/linear weight, as the official
    builder (``--init kaiming_normal --mode fan_in --nonlinearity relu``); biases and BatchNorm
    keep PyTorch's defaults. Draws from torch's global generator (seed it first)."""
    for _, m in prunable_layers(model):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


class GenerationTrainer(Trainer):
    """Train a network for ``num_generations()`` generations of ``cfg.epochs`` epochs each.
    Subclasses (KE, DSD) provide the hooks and the summary."""

    method = "generations"

    def __init__(self, cfg: TrainConfig, dist):
        super().__init__(cfg, dist)
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                              f"({dist.world_size})", field="batch_size")
        self.data = load_data(cfg)
        self.speed = StepSpeed(cfg, self.device, self.say)
        self.C = self.data.num_classes
        self.input_shape = tuple(self.data.test_batch(torch.arange(1)).shape[1:])
        self.G = self.num_generations()
        self.generation, self.epoch = 1, 0
        self.records: list[dict] = []
        self.last_epoch: dict = {}  # the stats of the last epoch trained (for the generation record)

    # ---- hooks -----------------------------------------------------------------------------
    def trained_models(self) -> dict:
        return {"model": self.model}

    def num_generations(self) -> int:
        raise NotImplementedError

    def begin_generation(self) -> None:
        """Called when generation ``self.generation`` >= 2 starts (the model holds the previous one's weights)."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def epoch_extra(self) -> dict:
        return {}

    def generation_extra(self) -> dict:
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def schedule_position(self) -> tuple[int, int]:
        """(epoch within the current LR schedule, epochs of the schedule)."""
        return self.epoch, self.cfg.epochs

    def lr_scale(self) -> float:
        return 1.0

    def describe(self, record: dict) -> str:
        return f"generation {record['generation']}: test acc {record['test_accuracy']:.4f}"

    # ---- model and optimizer ---------------------------------------------------------------
    def build_model(self) -> None:
        torch.manual_seed(derive_seed(self.cfg.seed, 0, 17))
        self.model = build_model(self.cfg.model_name, self.C, self.input_shape[0], width=self.cfg.width)
        kaiming_init_(self.model)
        # (weights stay contiguous under --channels-last: KE's re-initialisation and DSD's masks
        # update them in place as flat tensors; the model makes its maps NHWC, configure_layers)
        self.model.to(self.device)
        self.speed.configure_layers(self.model)
        # the official get_optimizer: plain SGD over all parameters, weight decay on all of them
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay, foreach=True)
        self.forward_model = self.model
        if self.dist.enabled:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model)
        # compiled once per run: a new optimizer or closure every generation would recompile each
        # time and, past dynamo's recompile limit (8), silently fall back to eager
        self.losses = self.speed.compile(self._losses)
        self.optimizer_step = self.speed.optimizer_step(self.optimizer)

    def fresh_optimizer(self) -> None:
        """A new generation's optimizer: SGD's only state is the momentum buffers, zeroed in place
        (``restart_sgd_``: equal to a new ``torch.optim.SGD``; the learning rate is set every epoch)."""
        restart_sgd_(self.optimizer)

    def _losses(self, x: torch.Tensor, y: torch.Tensor):
        """The step's forward and loss (one graph under --compile); logits float32 before the loss."""
        with self.speed.autocast():
            logits = self.forward_model(x)
        logits = loss_precision(logits)
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing), logits

    def lr(self) -> float:
        """The official ``cosine_lr``, per epoch: ``lr (e+1)/W`` for e < W warm-up epochs, then
        ``0.5 (1 + cos(pi (e-W)/(T-W))) lr`` over a schedule of T epochs."""
        e, total = self.schedule_position()
        w, base = self.cfg.warmup_epochs, self.cfg.lr * self.lr_scale()
        if e < w:
            return base * (e + 1) / w
        return 0.5 * (1 + math.cos(math.pi * (e - w) / (total - w))) * base

    # ---- one epoch -----------------------------------------------------------------------
    def epoch_plan(self) -> EpochPlan:
        """This epoch's batch order, augmentation generator and learning rate, all from (seed,
        generation, epoch, rank): what a resumed epoch and a stacked replica (--seeds) replay."""
        cfg, W, rank = self.cfg, self.dist.world_size, self.dist.rank
        torch.manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, rank, 3))
        order = torch.Generator().manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, 1))
        augment = torch.Generator().manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, rank, 2))
        n = len(self.data.y_train)
        perm = torch.randperm(n, generator=order)
        B = min(cfg.batch_size, n - n % W) if n < cfg.batch_size else cfg.batch_size
        return EpochPlan(perm=perm, batch=B, steps=n // B, augment=augment, lr=self.lr())

    def batch(self, plan: EpochPlan, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``s``'s (images, labels) of this rank, augmented, on the device."""
        W, rank = self.dist.world_size, self.dist.rank
        idx = plan.perm[s * plan.batch:(s + 1) * plan.batch][rank::W]
        x = self.speed.inputs(self.data.train_batch(idx, plan.augment).to(self.device))
        return x, self.data.y_train[idx].to(self.device)

    def train_epoch(self) -> dict:
        plan = self.epoch_plan()
        set_lr(self.optimizer, plan.lr)
        sums = torch.zeros(3, dtype=torch.float64)  # loss * count, correct, count
        self.model.train()
        for s in range(plan.steps):
            x, y = self.batch(plan, s)
            loss, logits = self.losses(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer_step()
            self.after_step()
            sums += torch.tensor([loss.item() * len(y), (logits.argmax(-1) == y).sum().item(), len(y)],
                                 dtype=torch.float64)
        return self.epoch_stats(sums, plan.lr)

    def epoch_stats(self, sums: torch.Tensor, lr: float) -> dict:
        """The epoch's record from (loss * count, correct, count) summed over steps (and ranks)."""
        sums = self.dist.all_reduce_sum(sums)
        return {"loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2]), "lr": lr}

    # ---- evaluation ----------------------------------------------------------------------
    def sync_buffers(self) -> None:
        """BatchNorm statistics of rank 0 everywhere (DDP's buffer broadcast runs before a forward)."""
        self.dist.broadcast_buffers(self.model)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batch: int = 256) -> float:
        """Test accuracy; each rank evaluates its share of the test set, counts are summed."""
        was_training = model.training
        model.eval()
        n = len(self.data.y_test)
        mine = torch.arange(self.dist.rank, n, self.dist.world_size)
        counts = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(mine), batch):
            idx = mine[i:i + batch]
            pred = model(self.data.test_batch(idx).to(self.device)).argmax(-1).cpu()
            counts += torch.tensor([(pred == self.data.y_test[idx]).sum().item(), len(idx)], dtype=torch.float64)
        model.train(was_training)
        counts = self.dist.all_reduce_sum(counts)
        return float(counts[0] / counts[1])

    # ---- the Trainer contract --------------------------------------------------------------
    def start(self) -> None:
        self.build_model()

    def state(self) -> dict:
        return {"generation": self.generation, "epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "records": self.records, "last_epoch": self.last_epoch,
                **self.extra_state()}

    def load_state(self, state: dict) -> None:
        self.build_model()
        self.generation, self.epoch = state["generation"], state["epoch"]
        self.records, self.last_epoch = state["records"], state["last_epoch"]
        self.model.load_state_dict(state["model"])
        self.speed.load_optimizer_state(self.optimizer, state["optimizer"])
        self.load_extra_state(state)

    def end_generation(self) -> None:
        self.sync_buffers()
        record = {"type": "generation", "generation": self.generation,
                  "test_accuracy": self.accuracy(self.model),
                  "train_loss": self.last_epoch["loss"], "train_accuracy": self.last_epoch["train_accuracy"],
                  **self.generation_extra()}
        self.log(record)
        self.records.append(record)
        self.say(self.describe(record))

    def loop(self) -> None:
        while self.generation <= self.G:
            for _ in self.progress(range(self.epoch, self.cfg.epochs), desc=f"{self.method} gen {self.generation}",
                                   total=self.cfg.epochs - self.epoch):
                start = time.perf_counter()
                stats = self.train_epoch()
                self.check_losses({"loss": stats["loss"]}, f"generation {self.generation}, epoch {self.epoch}")
                self.last_epoch = {**stats, **self.epoch_extra()}
                self.log({"type": "epoch", "generation": self.generation, "epoch": self.epoch, **self.last_epoch,
                          "seconds": time.perf_counter() - start})
                self.epoch += 1
                self.checkpoint()
            self.end_generation()
            self.generation, self.epoch = self.generation + 1, 0
            if self.generation <= self.G:
                self.begin_generation()
            self.checkpoint()
