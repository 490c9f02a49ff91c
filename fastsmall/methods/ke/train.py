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

The generation loop (``fastsmall.methods.common.generations.GenerationTrainer``) is shared
with DSD, whose dense / sparse / re-dense phases are its three generations. ``impl`` picks
the re-initialisation once: ``kernels.FusedReinit`` (one ``fs.ops.ke_reinit_`` call) or
``official.OfficialReinit`` (the official per-module loop).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ... import reference
from ..common import Distributed
from ..common.generations import GenerationTrainer, kaiming_init_
from ..common.impl import choose
from ..common.stacked_generations import run_stacked
from ..common.trainer import run_trainer
from .config import Config
from .kernels import FusedReinit
from .masks import split_masks
from .official import OfficialReinit, keep_masks
from .slim import count_macs, count_params, extract_slim, slim_architecture

__all__ = ["KETrainer", "train", "reset_hypothesis_", "kaiming_init_", "keep_masks", "fit_fraction",
           "reset_to_fit_magnitude", "fit_only"]


def reset_hypothesis_(model: nn.Module, masks: dict, *, seed: int, generation: int, init: str = "torch_default",
                      impl: str = "fused", keeps: list | None = None) -> None:
    """KE's generation boundary: re-initialise every weight outside the fit hypothesis, in place.

    ``impl="fused"``: one ``fs.ops.ke_reinit_`` call (draws keyed by (seed, generation, tensor
    index), no mask tensors). ``impl="official"``: the official per-module loop (``official.py``:
    a stored bool mask per tensor -- ``keeps``, in ``masks``' order, built from ``masks`` when not
    given --, a fresh kaiming_uniform(a=sqrt 5) tensor from torch's generator seeded by (seed,
    generation), and ``torch.where`` per tensor). Only the conv/linear weights named in ``masks``
    change; biases and BatchNorm never do.
    """
    reinit = choose(impl, fused=FusedReinit, official=OfficialReinit)
    reinit = reinit(model, masks) if reinit is FusedReinit else reinit(model, masks, keeps)
    reinit(seed=seed, generation=generation, init=init)


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


def fit_only(model: nn.Module, masks: dict) -> nn.Module:
    """A copy of ``model`` with the reset hypothesis zeroed (every masked weight outside the fit
    hypothesis set to 0), the rest -- BatchNorm, biases -- unchanged: the DSD-style view of the fit
    hypothesis as a sparse network of the dense shape, for KELS and WELS alike."""
    net = copy.deepcopy(model)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            w = params[name]
            w.mul_(reference.ke_keep_mask(w.shape, m, w.device).to(w.dtype))
    return net


class KETrainer(GenerationTrainer):
    method = "ke"
    summary_settings = ("split_rate", "generations", "epochs_per_generation", "fit_sparsity")

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
        self.reinit = choose(cfg.impl, fused=FusedReinit, official=OfficialReinit)(self.model, self.masks)

    def schedule_position(self) -> tuple[int, int]:
        if self.cfg.mode == "long":
            return (self.generation - 1) * self.cfg.epochs + self.epoch, self.cfg.epochs * self.cfg.generations
        return self.epoch, self.cfg.epochs

    def begin_generation(self) -> None:
        cfg = self.cfg
        if cfg.mode == "ke":
            self.reinit(seed=cfg.seed, generation=self.generation, init=cfg.reinit)
        if cfg.mode in ("ke", "restart"):
            self.fresh_optimizer()

    def generation_extra(self) -> dict:
        slim = self.accuracy(extract_slim(self.model, self.cfg.split_rate)) if self.has_slim else None
        return {"epochs_trained": self.generation * self.cfg.epochs, "slim_test_accuracy": slim,
                "fit_only_test_accuracy": self.accuracy(fit_only(self.model, self.masks)),
                "fit_sparsity": self.fit_sparsity,
                "reset_to_fit_magnitude": reset_to_fit_magnitude(self.model, self.masks)}

    def describe(self, record: dict) -> str:
        slim = record["slim_test_accuracy"]
        return (f"generation {record['generation']}: test acc {record['test_accuracy']:.4f}"
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
            "fit_only_test_accuracy": last.get("fit_only_test_accuracy"),
            "per_generation": [{k: r.get(k) for k in ("generation", "epochs_trained", "test_accuracy",
                                                   "slim_test_accuracy", "fit_only_test_accuracy",
                                                   "reset_to_fit_magnitude")}
                               for r in self.records],
        }

    def trained_models(self) -> dict:
        models = {"model": self.model}
        if self.has_slim:  # the KELS fit hypothesis as a narrower network (no fine-tuning)
            models["slim"] = extract_slim(self.model, self.cfg.split_rate)
        return models

    def plot(self) -> None:
        from .plots import plot_run
        plot_run(self.records, self.run.read_metrics(), self.method, self.run)


def train(cfg: Config) -> dict:
    """Run Knowledge Evolution (or a control) as configured; returns the summary (also in summary.json)."""
    if cfg.seeds:  # many seeds, stacked in one process: the aggregate summary (out/summary.json)
        return run_stacked(KETrainer, cfg)
    return run_trainer(KETrainer, cfg)
