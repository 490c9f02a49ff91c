"""``--seeds S1 S2 ...`` for the generation methods (KE, DSD): one process trains one replica per
seed, stacked into one step, each replica exactly its own single-seed run::

    for each seed s: the single-seed trainer of (cfg, seed=s) in out/seed-s/  (its data subset,
                     initial weights, masks: everything a single-seed run derives from s)
    stack the trainers' networks (ReplicaStack: their tensors become rows of stacked tensors)
    for generation g = 1 .. G:
        every trainer's begin_generation()   # KE re-initialises, DSD prunes: in place, its own row
        for epoch e = 1 .. E:
            every trainer's epoch plan        # batch order, augmentation, lr from (s, g, e)
            for each step: the K batches -> one vmapped forward + loss, one backward, one SGD
                           update of the stacked tensors; every trainer's after_step()
            every trainer logs its epoch; one atomic checkpoint of all replicas
        every trainer evaluates and logs its generation
    out/seed-s/: config, metrics, summary, plots as a single-seed run; out/summary.json: mean, std,
    95 % interval over seeds; out/plots/seeds.png: one line per seed

Nothing in a KE / DSD step draws from torch's global generator (the networks have no dropout --
vgg11_bn, which has, is refused with seeds --; the augmentation and batch order have their own
generators), so K replicas can share one process.
The checkpoint holds every replica (out/checkpoints/last.pt, atomic, verified on load); a resumed
run restores all of them and continues as an uninterrupted one.

The seed directories, checkpoint, resume, torchrun split and aggregate are ``stacked.StackedRun``'s.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError
from .config import ConfigError
from .progress import progress
from .replicas import ReplicaStack
from .speed import loss_precision, set_lr
from .stacked import StackedRun

__all__ = ["StackedGenerations", "run_stacked"]


class StackedGenerations(StackedRun):
    """Train ``trainer_cls`` (a GenerationTrainer) for every seed of ``cfg.seeds`` at once."""

    # ---- the stacked step --------------------------------------------------------------------
    def bind(self) -> None:
        """Stack the replicas' networks and optimizers (after start or restore)."""
        self.stack = ReplicaStack([t.model for t in self.trainers])
        self.optimizer = self.stack.sgd([t.optimizer for t in self.trainers])
        self.optimizer_step = self.speed.optimizer_step(self.optimizer)
        smoothing, autocast = self.cfg.label_smoothing, self.speed.autocast

        def loss(network, x, y):  # the single-seed step's forward and loss (GenerationTrainer._losses)
            with autocast():
                logits = network(x)
            logits = loss_precision(logits)
            return F.cross_entropy(logits, y, label_smoothing=smoothing), logits

        self.losses = self.speed.compile(self.stack.functional(loss))

    def train_epoch(self) -> list[dict]:
        plans = [t.epoch_plan() for t in self.trainers]
        if len({(p.steps, p.batch, p.lr) for p in plans}) != 1:
            raise ConfigError("seeds: the replicas' epochs differ in steps, batch size or learning rate "
                              "(every seed must have as many training images)", field="seeds")
        steps, lr = plans[0].steps, plans[0].lr
        set_lr(self.optimizer, lr)
        for t in self.trainers:
            set_lr(t.optimizer, lr)  # (the replicas' own optimizers: their state_dicts)
        self.stack.train()
        K = len(self.trainers)
        sums = torch.zeros(K, 3, dtype=torch.float64)  # per replica: loss * count, correct, count
        for s in range(steps):
            batches = [t.batch(p, s) for t, p in zip(self.trainers, plans)]
            x = torch.stack([b[0] for b in batches])
            y = torch.stack([b[1] for b in batches])
            loss, logits = self.losses(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # each replica's gradient is its own loss's
            self.optimizer_step()
            for t in self.trainers:
                t.after_step()
            self.stack.reattach()
            n = y.shape[1]
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(-1) == y).sum(-1).double(),
                                 torch.full((K,), float(n), dtype=torch.float64)], 1)
        return [t.epoch_stats(sums[k], lr) for k, t in enumerate(self.trainers)]

    # ---- the loop (GenerationTrainer.loop, every replica in lockstep) --------------------------------
    def loop(self) -> None:
        ts, first = self.trainers, self.trainers[0]
        if len({(t.generation, t.epoch) for t in ts}) != 1:
            raise CheckpointError("the replicas of this checkpoint are at different epochs")
        while first.generation <= first.G:
            for _ in progress(range(first.epoch, self.cfg.epochs), desc=f"{self.method} x{len(ts)} gen "
                              f"{first.generation}", total=self.cfg.epochs - first.epoch, quiet=self.cfg.quiet):
                start = time.perf_counter()
                stats = self.train_epoch()
                self.check_losses({f"seed {t.cfg.seed} loss": st["loss"] for t, st in zip(ts, stats)},
                                  f"generation {first.generation}, epoch {first.epoch}")
                seconds = time.perf_counter() - start  # the stacked epoch: all replicas together
                for t, st in zip(ts, stats):
                    t.last_epoch = {**st, **t.epoch_extra()}
                    t.log({"type": "epoch", "generation": t.generation, "epoch": t.epoch, **t.last_epoch,
                           "seconds": seconds})
                    t.epoch += 1
                self.checkpoint()
            for t in ts:
                t.end_generation()
                t.generation, t.epoch = t.generation + 1, 0
                if t.generation <= t.G:
                    t.begin_generation()
            self.stack.reattach()  # (the official KE loop assigns w.data: back into the stack)
            self.checkpoint()


def run_stacked(trainer_cls, cfg) -> dict:
    """Validate ``cfg`` and train every seed of ``cfg.seeds`` stacked (under torchrun: each process
    its share of the seeds); returns the aggregate summary (out/summary.json)."""
    return StackedGenerations.run(trainer_cls, cfg)
