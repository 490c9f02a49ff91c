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

Nothing in a KE / DSD step draws from torch's global generator (the networks have no dropout; the
augmentation and batch order have their own generators), so K replicas can share one process.
The checkpoint holds every replica (out/checkpoints/last.pt, atomic, verified on load); a resumed
run restores all of them and continues as an uninterrupted one.

Under torchrun every process stacks its share of the seeds (``seeds[rank::world]``) on its own --
replicas never exchange anything -- with its own checkpoint (out/checkpoints/rank<r>-of-<w>.pt); the
processes meet once at the end, where rank 0 aggregates every seed's summary from out/seed-S/ (one
machine, or an ``out`` on a file system all nodes share).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, has_checkpoint, load_latest_checkpoint, save_checkpoint
from .config import ConfigError, config_fingerprint
from .distributed import Distributed
from .progress import progress
from .replicas import ReplicaStack
from .rng import get_rng_state, set_rng_state
from .rundir import RunDir
from .seeds import aggregate, plot_seeds, seed_dir_name
from .speed import loss_precision, set_lr
from .trainer import VOLATILE_FIELDS, run_in_process_group

__all__ = ["StackedGenerations", "run_stacked"]


def _cloned(obj):
    """``obj`` with every tensor cloned: a replica's tensors are views of the stacked ones, and
    torch.save of a view writes the whole stacked storage."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _cloned(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cloned(v) for v in obj)
    return obj


class StackedGenerations:
    """Train ``trainer_cls`` (a GenerationTrainer) for every seed of ``cfg.seeds`` at once."""

    def __init__(self, trainer_cls, cfg, dist: Distributed):
        # under torchrun every process stacks its share of the seeds (seeds[rank::world]) on its own:
        # replicas never talk to each other, so the ranks meet only at the end (the aggregate)
        self.dist = dist
        self.my_seeds = list(cfg.seeds)[dist.rank::dist.world_size]
        if not self.my_seeds:
            raise ConfigError(f"seeds: {len(cfg.seeds)} seeds for {dist.world_size} processes; every process needs "
                              "at least one seed")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.run = RunDir(self.out, writer=dist.is_main)
        self.trainers = []
        alone = Distributed.alone(dist.device, dist.timeout)
        for seed in self.my_seeds:
            one = dataclasses.replace(cfg, seed=seed, seeds=[], out=str(self.out / seed_dir_name(seed)))
            t = trainer_cls(one, alone)
            t.say = (lambda message, _s=seed, _m=t.method:
                     None if cfg.quiet else print(f"[{_m} seed {_s}] {message}", flush=True))
            self.trainers.append(t)
        self.method = self.trainers[0].method
        self.speed = self.trainers[0].speed

    # ---- checkpoint ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return config_fingerprint(self.cfg, VOLATILE_FIELDS)

    @property
    def checkpoint_path(self) -> Path:
        """One file per process (each holds its share of the replicas)."""
        if self.dist.world_size == 1:
            return self.run.checkpoint_path
        return self.run.checkpoint_path.with_name(f"rank{self.dist.rank}-of-{self.dist.world_size}.pt")

    def checkpoint(self) -> None:
        replicas = [_cloned({**t.state(), "metrics_lines": t.metrics_lines}) for t in self.trainers]
        save_checkpoint(self.checkpoint_path, {
            "method": f"{self.method}-seeds", "config": self.fingerprint(), "world_size": self.dist.world_size,
            "seeds": self.my_seeds, "replicas": replicas, "rng": get_rng_state()}, keep_previous=True)

    def restore(self) -> None:
        state, _, note = load_latest_checkpoint(self.checkpoint_path, map_location=self.trainers[0].device,
                                                expect={"method": f"{self.method}-seeds", "config": self.fingerprint(),
                                                        "world_size": self.dist.world_size})
        if note:
            self.say(note)
        for t, replica in zip(self.trainers, state["replicas"]):
            t.metrics_lines = replica["metrics_lines"]
            t.load_state(replica)
            t.run.truncate_metrics(t.metrics_lines)
        set_rng_state(state["rng"])

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
                              "(every seed must have as many training images)")
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

    # ---- the run -----------------------------------------------------------------------------
    def run_all(self) -> dict:
        cfg = self.cfg
        for run in [self.run] + [t.run for t in self.trainers]:
            run.remove_stale_temporaries()
        if cfg.resume and has_checkpoint(self.checkpoint_path):
            self.restore()
        else:
            if cfg.resume:
                self.say(f"no checkpoint in {cfg.out} for {self.dist.world_size} process(es); starting a new run")
            if any(t.run.read_metrics() for t in self.trainers):
                raise CheckpointError(f"{cfg.out} already holds a run" + (
                    "" if cfg.resume else "; pass resume=True (--resume) or another out"))
            self.run.write_config(cfg)
            for t in self.trainers:
                t.run.write_config(t.cfg)
                t.run.truncate_metrics(0)
                t.start()
        self.bind()
        self.loop()
        for t in self.trainers:
            t.run.write_summary(t.summary())
            t.plot()
        self.dist.barrier()  # every rank's seeds are written: the aggregate reads them from out/seed-S/
        summaries, curves = {}, {}
        for seed in cfg.seeds:
            run = RunDir(self.out / seed_dir_name(seed), writer=False)
            summaries[seed] = json.loads((run.root / "summary.json").read_text())
            records = [r for r in run.read_metrics() if r["type"] == "generation"]
            curves[seed] = ([r["generation"] for r in records], [r["test_accuracy"] for r in records])
        summary = aggregate(self.method, summaries, settings=self.trainers[0].summary_settings)
        self.run.write_summary(summary)
        if self.dist.is_main:
            plot_seeds(self.run.plot_path("seeds.png"), curves, xlabel="generation", ylabel="test accuracy",
                       title=f"{self.method}: one line per seed")
        return summary

    def say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[{self.method}] {message}", flush=True)


def run_stacked(trainer_cls, cfg) -> dict:
    """Validate ``cfg`` and train every seed of ``cfg.seeds`` stacked (under torchrun: each process
    its share of the seeds); returns the aggregate summary (out/summary.json)."""
    return run_in_process_group(cfg, lambda dist: StackedGenerations(trainer_cls, cfg, dist))
