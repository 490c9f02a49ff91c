"""Dense-Sparse-Dense (Han et al., ICLR 2017) on the Knowledge Evolution generation loop:

    phase 1 (dense):    train E epochs from the KE initialisation
    phase 2 (sparse):   prune the round(sparsity * numel) smallest-magnitude weights of every
                        conv/linear layer; train E epochs with the pruned weights zeroed by
                        fs.ops.masked_mul_ after every optimizer step (the mask holds)
    phase 3 (re-dense): pruned weights restart at zero (fs.ops.ke_reinit_ with init="zero"),
                        train E epochs without the mask at lr * redense_lr_scale

Each phase builds a fresh optimizer and restarts the LR schedule (warm-up + cosine), as a
KE generation does; a KE generation boundary re-initialises a fixed reset hypothesis,
DSD's re-densify is the same op with the magnitude mask and zeros. ``impl`` picks the masked
steps once: ``kernels.FusedMasking`` (one multi-tensor op per step) or
``official.OfficialMasking`` (per-tensor loops: ``W.mul_(mask)``; ``torch.where``). The
magnitude masks depend on the trained weights, so they are stored in the checkpoint.
Checkpoints, exact resume and torchrun as ``fastsmall.methods.ke``.
"""
from __future__ import annotations

from ..common import Distributed
from ..common.generations import GenerationTrainer
from ..common.impl import choose
from ..common.layers import prunable_layers
from ..common.stacked_generations import run_stacked
from ..common.trainer import run_trainer
from .config import Config
from .kernels import FusedMasking
from .masks import magnitude_masks
from .official import OfficialMasking

PHASES = {1: "dense", 2: "sparse", 3: "re-dense"}


class DSDTrainer(GenerationTrainer):
    method = "dsd"
    summary_settings = ("sparsity", "epochs_per_phase")

    def __init__(self, cfg: Config, dist: Distributed):
        super().__init__(cfg, dist)
        self.masks: dict | None = None
        self.masking = choose(cfg.impl, fused=FusedMasking, official=OfficialMasking)

    def num_generations(self) -> int:
        return 3

    def lr_scale(self) -> float:
        return self.cfg.redense_lr_scale if self.generation == 3 else 1.0

    def _weights(self):
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.masks]

    def begin_generation(self) -> None:
        if self.generation == 2:
            self.masks = magnitude_masks(self.model, self.cfg.sparsity)
            self.after_step()
        elif self.generation == 3:  # re-dense: the pruned weights restart at (+)0
            self.masking.redense(self._weights(), list(self.masks.values()), self.cfg.seed)
        self.fresh_optimizer()

    def after_step(self) -> None:
        if self.generation == 2:
            self.masking.prune(self._weights(), list(self.masks.values()))

    def _pruned_nonzero(self) -> int:
        return sum(int((w.detach()[~k] != 0).sum()) for w, k in zip(self._weights(), self.masks.values()))

    def _sparsity(self) -> float:
        ws = [m.weight.detach() for _, m in prunable_layers(self.model)]
        return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)

    def epoch_extra(self) -> dict:
        return {"pruned_nonzero": self._pruned_nonzero()} if self.masks is not None else {}

    def generation_extra(self) -> dict:
        return {"phase": PHASES[self.generation], "epochs_trained": self.generation * self.cfg.epochs,
                "weight_sparsity": self._sparsity()}

    def describe(self, record: dict) -> str:
        return (f"{record['phase']} phase: test acc {record['test_accuracy']:.4f}, "
                f"zero weights {record['weight_sparsity']:.3f}")

    def extra_state(self) -> dict:
        return {"masks": self.masks}

    def load_extra_state(self, state: dict) -> None:
        masks = state["masks"]
        self.masks = None if masks is None else {k: v.to(self.device) for k, v in masks.items()}

    def summary(self) -> dict:
        acc = {r["phase"]: r["test_accuracy"] for r in self.records}
        return {
            "method": "dsd", "sparsity": self.cfg.sparsity, "epochs_per_phase": self.cfg.epochs,
            "test_accuracy": acc["re-dense"], "dense_test_accuracy": acc["dense"],
            "sparse_test_accuracy": acc["sparse"],
            "per_phase": [{k: r[k] for k in ("generation", "phase", "epochs_trained", "test_accuracy",
                                              "weight_sparsity")} for r in self.records],
        }

    def plot(self) -> None:
        from ..ke.plots import plot_run
        plot_run(self.records, self.run.read_metrics(), "dsd", self.run, xlabel="DSD phase",
                 phases=["dense", "sparse", "re-dense"])


def train(cfg: Config) -> dict:
    """Run DSD as configured; returns the summary (also in summary.json)."""
    if cfg.seeds:  # many seeds, stacked in one process: the aggregate summary (out/summary.json)
        return run_stacked(DSDTrainer, cfg)
    return run_trainer(DSDTrainer, cfg)
