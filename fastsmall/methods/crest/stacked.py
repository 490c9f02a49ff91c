"""``--seeds S1 S2 ...`` for CReST / CReST+ / FixMatch: one replica per seed in one process, each
exactly its own single-seed run (Algorithm 1 of the paper, every replica in lockstep)::

    for each seed s: the single-seed trainer of (cfg, seed=s) in out/seed-s/  (its split and class
                     ranks, initial weights, batches, augmentation: all derived from s)
    for generation g = 0 .. G-1:
        every replica: a fresh network, EMA, DA state (its own, from (s, g))
        for epoch e, for each step:
            every replica's batch, augmented with its own generator state   # per-replica draws
            one vmapped forward of the K networks (one grouped conv per layer)
            every replica's losses from its own logits: labelled CE, its DA and pseudo-labels,
            masked CE of the strong view  # per-replica state, fastsmall's fused DA / CE ops
            one backward of the sum (each replica's gradient is its own loss's), one SGD update of
            the stacked tensors, one EMA update of the stacked EMA tensors
        every replica evaluates its EMA network, logs its epoch; one checkpoint of all replicas
        every replica pseudo-labels its unlabelled set (its own per-class rates and picks)

Why the losses are outside vmap: each replica's distribution alignment carries its own running
state (the official window of 128 batch means) and runs through fastsmall's custom ops, which have
no batching rule; per replica they are a few small ops on [N, C] logits, next to convolutions on K x N
images. Augmentation draws from torch's global generator in a single-seed run; here each replica's
generator state is swapped in around its own draws, so every replica sees the draws its single-seed
run sees (the networks draw nothing: no dropout).
"""
from __future__ import annotations

import time

import torch

from ..common.checkpoint import CheckpointError
from ..common.progress import progress
from ..common.replicas import ReplicaStack
from ..common.speed import set_lr
from ..common.stacked import StackedRun
from .train import ema_update_

__all__ = ["StackedCReST"]


class StackedCReST(StackedRun):
    """CReST's generations for every seed of ``cfg.seeds`` at once."""

    curve_labels = ("generation", "test balanced accuracy")

    def seed_curve(self, records):
        gens = [r for r in records if r["type"] == "generation"]
        return [r["generation"] for r in gens], [r["test"]["balanced_accuracy"] for r in gens]

    # ---- the stacked step --------------------------------------------------------------------
    def bind(self) -> None:
        """Stack the replicas' networks, optimizers and EMA networks (after start or restore)."""
        if self.trainers[0].generation >= self.trainers[0].G:
            return  # (resumed from the checkpoint of a finished run: nothing left to train)
        self.stack = ReplicaStack([t.model for t in self.trainers])
        self.optimizer = self.stack.sgd([t.optimizer for t in self.trainers])
        self.optimizer_step = self.speed.optimizer_step(self.optimizer)
        autocast = self.speed.autocast

        def forward(network, x):
            with autocast():
                return network(x)

        self.forward = self.speed.compile(self.stack.functional(forward))
        self.bind_ema()

    def bind_ema(self) -> None:
        """Stack the EMA networks (new modules every generation)."""
        self.ema_stack = ReplicaStack([t.ema for t in self.trainers])
        self.ema_params = list(self.ema_stack.params.values())
        self.ema_buffers = list(self.ema_stack.buffers.values())
        self.params = list(self.stack.params.values())
        self.buffers = list(self.stack.buffers.values())

    def train_epoch(self) -> list[dict]:
        ts, first = self.trainers, self.trainers[0]
        plans = []
        for t in ts:  # each plan seeds the global generator (its augmentation): keep each replica's state
            plans.append(t.epoch_plan())
            plans[-1].rng = torch.get_rng_state()
        self.stack.train()
        K = len(ts)
        sums = torch.zeros(K, 4, dtype=torch.float64)
        for s in progress(range(self.cfg.steps_per_epoch), desc=f"{self.method} x{K} gen {first.generation_number} "
                          f"epoch {first.epoch}", quiet=True):
            batches = []
            for t, plan in zip(ts, plans):
                torch.set_rng_state(plan.rng)
                batches.append(t.batch(plan, s))
                plan.rng = torch.get_rng_state()
            lr = first._lr()
            set_lr(self.optimizer, lr)
            for t in ts:
                set_lr(t.optimizer, lr)  # (the replicas' own optimizers: their state_dicts)
            logits = self.forward(torch.stack([b[0] for b in batches]))
            terms = [t.loss_terms(logits[k], b[1], plan.t_g) for k, (t, b, plan) in enumerate(zip(ts, batches, plans))]
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack([term[0] for term in terms]).sum().backward()  # each replica's gradient: its own loss's
            self.optimizer_step()
            ema_update_(self.ema_params, self.params, self.ema_buffers, self.buffers, first.ema_decay())
            for k, (t, term) in enumerate(zip(ts, terms)):
                t.step += 1
                sums[k] += t.step_stats(*term)
        return [t.epoch_losses(sums[k]) for k, t in enumerate(ts)]

    # ---- the loop (CReSTTrainer.loop, every replica in lockstep) ------------------------------------
    def loop(self) -> None:
        ts, first = self.trainers, self.trainers[0]
        if len({(t.generation, t.epoch, t.step) for t in ts}) != 1:
            raise CheckpointError("the replicas of this checkpoint are at different steps")
        while first.generation < first.G:
            for _ in progress(range(first.epoch, self.cfg.epochs), desc=f"{self.method} x{len(ts)} gen "
                              f"{first.generation_number}", total=self.cfg.epochs - first.epoch, quiet=self.cfg.quiet):
                start = time.perf_counter()
                losses = self.train_epoch()
                self.check_losses({f"seed {t.cfg.seed} loss": lo["loss"] for t, lo in zip(ts, losses)},
                                  f"generation {first.generation_number}, epoch {first.epoch}")
                for t, epoch_losses in zip(ts, losses):
                    t.end_epoch(epoch_losses, start)
                self.checkpoint()
            for t in ts:
                t.next_generation()  # fresh weights and momentum are loaded in place; the EMA is new
            if first.generation < first.G:
                self.bind_ema()
            self.checkpoint()
