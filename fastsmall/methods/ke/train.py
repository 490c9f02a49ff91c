"""Knowledge Evolution (Taha et al., CVPR 2021) as the official code trains it, plus two
controls at equal compute:

    generation 1: conv/linear weights ~ kaiming_normal (fan_in, ReLU); train E epochs
    generation g = 2..N:
        start from the last-epoch weights of generation g-1
        re-initialise the reset hypothesis (complement of the fit hypothesis mask) with
        fs.ops.ke_reinit_ (PyTorch's default layer init by default), keyed by (seed, g, tensor);
        never BatchNorm or biases
        fresh SGD optimizer, the LR schedule (linear warm-up + cosine) restarts; train E epochs
    after every generation: test accuracy of the dense network and (KELS) of the slim network

``mode="restart"``: generations restart the optimizer and LR schedule without re-initialising
anything; ``mode="long"``: one optimizer and one schedule over N x E epochs, evaluated every E
epochs. With the same seed all three modes start from the same weights and see the same
batches, so generation 1 of ``ke`` and ``restart`` is the N1 baseline.

Checkpoints (atomic) after every epoch and every generation; ``resume=True`` continues a
killed run and ends with the same metrics as an uninterrupted one: every epoch reseeds its
batch order and augmentation from (seed, generation, epoch, rank), the re-initialisation
is a function of (seed, generation, tensor), and the masks are regenerated from the
config (never stored). Under torchrun: DistributedDataParallel, each rank takes its share
of every global batch, metrics are reduced over ranks, rank 0 writes.

The generation loop (``GenerationTrainer``) is shared with DSD (``fastsmall.methods.dsd``),
whose dense / sparse / re-dense phases are its three generations.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ... import reference
from ..common import (CheckpointError, ConfigError, Distributed, RunDir, config_fingerprint, derive_seed,
                      get_rng_state, load_checkpoint, progress, save_checkpoint, set_rng_state, validate_config)
from ..models import build as build_model
from .config import Config
from .data import load_data
from .masks import prunable_layers, reinitialize_, split_masks
from .slim import count_macs, count_params, extract_slim, slim_architecture


def kaiming_init_(model: nn.Module) -> None:
    """Generation 1: kaiming_normal (fan_in, ReLU) for every conv/linear weight, as the official
    builder (``--init kaiming_normal --mode fan_in --nonlinearity relu``); biases and BatchNorm
    keep PyTorch's defaults. Draws from torch's global generator (seed it first)."""
    for _, m in prunable_layers(model):
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


def reset_hypothesis_(model: nn.Module, masks: dict, *, seed: int, generation: int, init: str = "torch_default",
                      impl: str = "fused", keeps: list | None = None) -> None:
    """KE's generation boundary: re-initialise every weight outside the fit hypothesis, in place.

    ``impl="fused"``: one ``fs.ops.ke_reinit_`` call (draws keyed by (seed, generation, tensor
    index), no mask tensors). ``impl="reference"``: the official per-module loop
    (``fastsmall.reference.official_ke_reinit_``: a stored bool mask per tensor -- ``keeps``, in
    ``masks``' order, built from ``masks`` when not given, as the official layers hold theirs --,
    a fresh kaiming_uniform(a=sqrt 5) tensor from torch's generator seeded by (seed, generation),
    and ``torch.where`` per tensor); other initialisers than ``torch_default`` use
    ``fastsmall.reference.ke_reinit_``. Only the conv/linear weights named in ``masks`` change;
    biases and BatchNorm never do.
    """
    if impl == "fused":
        reinitialize_(model, masks, seed, generation, init)
        return
    params = dict(model.named_parameters())
    tensors = [params[n] for n in masks]
    if init == "torch_default":
        if keeps is None:
            keeps = keep_masks(model, masks)
        torch.manual_seed(derive_seed(seed, generation, 0x4B45))
        reference.official_ke_reinit_(tensors, keeps)
    else:
        reference.ke_reinit_(tensors, list(masks.values()), seed, generation, init)


def keep_masks(model: nn.Module, masks: dict) -> list[torch.Tensor]:
    """The bool keep mask of every tensor named in ``masks`` (what the official layers store)."""
    params = dict(model.named_parameters())
    return [reference.ke_keep_mask(params[n].shape, m, params[n].device) for n, m in masks.items()]


def fit_fraction(model: nn.Module, masks: dict) -> float:
    """Fraction of the masked weights that belong to the fit hypothesis."""
    params = dict(model.named_parameters())
    kept = total = 0
    for name, m in masks.items():
        p = params[name]
        kept += int(reference.ke_keep_mask(p.shape, m, p.device).sum())
        total += p.numel()
    return kept / total if total else 1.0


@torch.no_grad()
def reset_to_fit_magnitude(model: nn.Module, masks: dict) -> float | None:
    """mean |w| of the reset hypothesis / mean |w| of the fit hypothesis (the official code
    logs both means per layer): below 1 when training leaves the reset part small."""
    params = dict(model.named_parameters())
    fit_sum = fit_n = reset_sum = reset_n = 0.0
    for name, m in masks.items():
        w = params[name].detach().abs()
        keep = reference.ke_keep_mask(w.shape, m, w.device)
        fit_sum += float(w[keep].sum()); fit_n += int(keep.sum())
        reset_sum += float(w[~keep].sum()); reset_n += int((~keep).sum())
    if not fit_n or not reset_n or fit_sum == 0:
        return None
    return (reset_sum / reset_n) / (fit_sum / fit_n)


class GenerationTrainer:
    """Train a network for ``num_generations`` generations of ``cfg.epochs`` epochs each, with
    hooks at generation boundaries and after optimizer steps. Subclasses: KE, DSD."""

    method = "generations"

    def __init__(self, cfg, dist: Distributed):
        self.cfg, self.dist = cfg, dist
        self.device = torch.device(cfg.device)
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                              f"({dist.world_size})")
        self.data = load_data(cfg)
        self.C = self.data.num_classes
        self.input_shape = tuple(self.data.test_batch(torch.arange(1)).shape[1:])
        self.run = RunDir(cfg.out, writer=dist.is_main)
        self.G = self.num_generations()
        self.generation, self.epoch = 1, 0
        self.records: list[dict] = []
        self.last_epoch: dict = {}  # the stats of the last epoch trained (for the generation record)
        self.metrics_lines = 0

    # ---- hooks -----------------------------------------------------------------------------
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

    # ---- model and optimizer ---------------------------------------------------------------
    def build_model(self) -> None:
        torch.manual_seed(derive_seed(self.cfg.seed, 0, 17))
        self.model = build_model(self.cfg.model_name, self.C, self.input_shape[0], width=self.cfg.width)
        kaiming_init_(self.model)
        self.model.to(self.device)
        self.fresh_optimizer()

    def fresh_optimizer(self) -> None:
        # the official get_optimizer: plain SGD over all parameters, weight decay on all of them
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay)
        self.forward_model = self.model
        if self.dist.enabled:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model)
        if self.cfg.compile:
            self.forward_model = torch.compile(self.forward_model)

    def lr(self) -> float:
        """The official ``cosine_lr``, per epoch: ``lr (e+1)/W`` for e < W warm-up epochs, then
        ``0.5 (1 + cos(pi (e-W)/(T-W))) lr`` over a schedule of T epochs."""
        e, total = self.schedule_position()
        w, base = self.cfg.warmup_epochs, self.cfg.lr * self.lr_scale()
        if e < w:
            return base * (e + 1) / w
        return 0.5 * (1 + math.cos(math.pi * (e - w) / (total - w))) * base

    # ---- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> dict:
        cfg, W, rank = self.cfg, self.dist.world_size, self.dist.rank
        torch.manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, rank, 3))
        order = torch.Generator().manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, 1))
        augment = torch.Generator().manual_seed(derive_seed(cfg.seed, self.generation, self.epoch, rank, 2))
        n = len(self.data.y_train)
        perm = torch.randperm(n, generator=order)
        B = min(cfg.batch_size, n - n % W) if n < cfg.batch_size else cfg.batch_size
        steps = n // B
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(3, dtype=torch.float64)  # loss * count, correct, count
        self.model.train()
        for s in range(steps):
            idx = perm[s * B:(s + 1) * B][rank::W]
            x = self.data.train_batch(idx, augment).to(self.device)
            y = self.data.y_train[idx].to(self.device)
            logits = self.forward_model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.after_step()
            sums += torch.tensor([loss.item() * len(y), (logits.argmax(-1) == y).sum().item(), len(y)],
                                 dtype=torch.float64)
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

    # ---- checkpoints ---------------------------------------------------------------------
    def config_json(self) -> str:
        return config_fingerprint(self.cfg, ("resume", "quiet", "out", "device", "compile"))

    def checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.run.checkpoint_path, {
            "method": self.method, "config": self.config_json(), "world_size": self.dist.world_size,
            "generation": self.generation, "epoch": self.epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "records": self.records, "last_epoch": self.last_epoch,
            "metrics_lines": self.metrics_lines, "rng": get_rng_state(), **self.extra_state(),
        })

    def restore(self) -> None:
        state = load_checkpoint(self.run.checkpoint_path, map_location=self.device,
                                expect={"method": self.method, "config": self.config_json(),
                                        "world_size": self.dist.world_size})
        self.build_model()
        self.generation, self.epoch = state["generation"], state["epoch"]
        self.records, self.metrics_lines = state["records"], state["metrics_lines"]
        self.last_epoch = state["last_epoch"]
        self.model.load_state_dict(state["model"])
        self.fresh_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state)
        set_rng_state(state["rng"])
        self.run.truncate_metrics(self.metrics_lines)

    def log(self, record: dict) -> None:
        self.run.log_metrics(record)
        self.metrics_lines += 1

    # ---- the loop ------------------------------------------------------------------------
    def end_generation(self, last_epoch: dict) -> None:
        self.sync_buffers()
        record = {"type": "generation", "generation": self.generation,
                  "test_accuracy": self.accuracy(self.model),
                  "train_loss": last_epoch["loss"], "train_accuracy": last_epoch["train_accuracy"],
                  **self.generation_extra()}
        self.log(record)
        self.records.append(record)
        if self.dist.is_main:
            print(self.describe(record), flush=True)

    def describe(self, record: dict) -> str:
        return f"[{self.method}] generation {record['generation']}: test acc {record['test_accuracy']:.4f}"

    def run_all(self) -> dict:
        cfg = self.cfg
        if cfg.resume and self.run.checkpoint_path.exists():
            self.restore()
        else:
            if cfg.resume and self.dist.is_main:
                print(f"[{self.method}] no checkpoint in {cfg.out}; starting a new run", flush=True)
            if self.run.read_metrics() and self.dist.is_main and not cfg.resume:
                raise CheckpointError(f"{cfg.out} already holds a run; pass resume=True (--resume) or another out")
            self.run.write_config(cfg)
            self.run.truncate_metrics(0)
            self.build_model()
        while self.generation <= self.G:
            epochs = progress(range(self.epoch, cfg.epochs), desc=f"{self.method} gen {self.generation}",
                              total=cfg.epochs - self.epoch, quiet=cfg.quiet or not self.dist.is_main)
            for _ in epochs:
                start = time.perf_counter()
                stats = self.train_epoch()
                self.last_epoch = {**stats, **self.epoch_extra()}
                self.log({"type": "epoch", "generation": self.generation, "epoch": self.epoch, **self.last_epoch,
                          "seconds": time.perf_counter() - start})
                self.epoch += 1
                self.checkpoint()
            self.end_generation(self.last_epoch)
            self.generation, self.epoch = self.generation + 1, 0
            if self.generation <= self.G:
                self.begin_generation()
            self.checkpoint()
        summary = self.summary()
        self.run.write_summary(summary)
        if self.dist.is_main:
            self.plot()
        return summary

    def summary(self) -> dict:
        raise NotImplementedError

    def plot(self) -> None:
        pass


class KETrainer(GenerationTrainer):
    method = "ke"

    def __init__(self, cfg: Config, dist: Distributed):
        super().__init__(cfg, dist)
        self.method = {"ke": "ke", "restart": "restart", "long": "long"}[cfg.mode]

    def num_generations(self) -> int:
        return self.cfg.generations

    def build_model(self) -> None:
        super().build_model()
        cfg = self.cfg
        # the masks are a function of the architecture, the split and the seed: regenerated, never stored
        self.masks = split_masks(self.model, cfg.split_rate, mode=cfg.split, seed=cfg.seed)
        self.has_slim = cfg.split == "kels"
        if self.has_slim:
            try:
                slim_architecture(self.model, cfg.split_rate)
            except TypeError:
                self.has_slim = False
        self.fit_sparsity = 1.0 - fit_fraction(self.model, self.masks)
        # the official code's layers hold bool masks; its loop is what --impl reference runs
        self.keeps = keep_masks(self.model, self.masks) if cfg.impl == "reference" else None

    def schedule_position(self) -> tuple[int, int]:
        if self.cfg.mode == "long":
            return (self.generation - 1) * self.cfg.epochs + self.epoch, self.cfg.epochs * self.cfg.generations
        return self.epoch, self.cfg.epochs

    def begin_generation(self) -> None:
        cfg = self.cfg
        if cfg.mode == "ke":
            reset_hypothesis_(self.model, self.masks, seed=cfg.seed, generation=self.generation, init=cfg.reinit,
                              impl=cfg.impl, keeps=self.keeps)
        if cfg.mode in ("ke", "restart"):
            self.fresh_optimizer()

    def generation_extra(self) -> dict:
        slim = self.accuracy(extract_slim(self.model, self.cfg.split_rate)) if self.has_slim else None
        return {"epochs_trained": self.generation * self.cfg.epochs, "slim_test_accuracy": slim,
                "fit_sparsity": self.fit_sparsity,
                "reset_to_fit_magnitude": reset_to_fit_magnitude(self.model, self.masks)}

    def describe(self, record: dict) -> str:
        slim = record["slim_test_accuracy"]
        return (f"[{self.method}] generation {record['generation']}: test acc {record['test_accuracy']:.4f}"
                + (f", slim {slim:.4f}" if slim is not None else "")
                + f", train loss {record['train_loss']:.4f}")

    def sizes(self) -> dict:
        dense = {"params": count_params(self.model), "macs": count_macs(self.model, self.input_shape)}
        slim = None
        if self.has_slim:
            net = slim_architecture(self.model, self.cfg.split_rate).to(self.device)
            slim = {"params": count_params(net), "macs": count_macs(net, self.input_shape)}
        return {"dense": dense, "slim": slim}

    def summary(self) -> dict:
        cfg, last = self.cfg, self.records[-1]
        return {
            "method": self.method, "split": cfg.split, "split_rate": cfg.split_rate, "generations": self.G,
            "epochs_per_generation": cfg.epochs,
            "test_accuracy": last["test_accuracy"], "slim_test_accuracy": last["slim_test_accuracy"],
            "n1_test_accuracy": self.records[0]["test_accuracy"],
            "fit_sparsity": self.fit_sparsity, **self.sizes(),
            "per_generation": [{k: r[k] for k in ("generation", "epochs_trained", "test_accuracy",
                                                   "slim_test_accuracy", "reset_to_fit_magnitude")}
                               for r in self.records],
        }

    def plot(self) -> None:
        from .plots import plot_run
        plot_run(self.records, self.run.read_metrics(), self.method, self.run)


def train(cfg: Config) -> dict:
    """Run Knowledge Evolution (or a control) as configured; returns the summary (also in summary.json)."""
    validate_config(cfg)
    dist = Distributed(torch.device(cfg.device))
    try:
        return KETrainer(cfg, dist).run_all()
    finally:
        dist.close()
