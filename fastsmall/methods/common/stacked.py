"""What every ``--seeds S1 S2 ...`` run shares, whatever its method: one single-seed trainer per seed
(each in ``out/seed-S/``, deriving everything from its own seed), one atomic checkpoint of all of
them, resume, and the aggregate over seeds. A method's stacked loop subclasses :class:`StackedRun`
and provides only the stacked step::

    class StackedMine(StackedRun):
        def bind(self): ...        # stack the trainers' networks and optimizers (after start / restore)
        def loop(self): ...        # the method's algorithm box, every replica in lockstep
        def seed_curve(self, records): ...  # (x, y) of one seed's metrics.jsonl for the seeds plot

    summary = StackedMine.run(MyTrainer, cfg)

Under torchrun every process stacks its share of the seeds (``seeds[rank::world]``) on its own --
replicas never exchange anything -- with its own checkpoint (out/checkpoints/rank<r>-of-<w>.pt); the
processes meet once at the end, where rank 0 aggregates every seed's summary from out/seed-S/ (one
machine, or an ``out`` on a file system all nodes share).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .checkpoint import CheckpointError, has_checkpoint, load_latest_checkpoint, save_checkpoint
from .config import ConfigError, config_fingerprint
from .distributed import Distributed
from .finite import check_finite_losses
from .rng import get_rng_state, set_rng_state
from .rundir import RunDir
from .seeds import aggregate, plot_seeds, seed_dir_name
from .trainer import VOLATILE_FIELDS, run_in_process_group

__all__ = ["StackedRun", "aggregate_seeds"]


def aggregate_seeds(run: RunDir, seeds, method: str, dist: Distributed, *, settings=(), seed_curve,
                    curve_labels, seed_metrics=None) -> dict:
    """After every process has written its seeds (``out/seed-S/``): the aggregate over all of them
    in ``out/summary.json`` and one line per seed in ``out/plots/seeds.png``, from the seeds' own
    files. ``seed_metrics`` maps a seed's summary to the flat metrics to aggregate (default: as is)."""
    dist.barrier()  # every rank's seeds are written: the aggregate reads them from out/seed-S/
    summaries, curves = {}, {}
    for seed in seeds:
        seed_run = RunDir(run.root / seed_dir_name(seed), writer=False)
        summary = json.loads((seed_run.root / "summary.json").read_text())
        summaries[seed] = seed_metrics(summary) if seed_metrics is not None else summary
        curves[seed] = seed_curve(seed_run.read_metrics())
    summary = aggregate(method, summaries, settings=settings)
    run.write_summary(summary)
    if dist.is_main:
        xlabel, ylabel = curve_labels
        plot_seeds(run.plot_path("seeds.png"), curves, xlabel=xlabel, ylabel=ylabel,
                   title=f"{method}: one line per seed")
    return summary


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


class StackedRun:
    """Train ``trainer_cls`` for every seed of ``cfg.seeds`` at once (see the module docstring)."""

    curve_labels = ("generation", "test accuracy")  # the seeds plot's axes

    def __init__(self, trainer_cls, cfg, dist: Distributed):
        self.dist = dist
        self.my_seeds = list(cfg.seeds)[dist.rank::dist.world_size]
        if not self.my_seeds:
            raise ConfigError(f"seeds: {len(cfg.seeds)} seeds for {dist.world_size} processes; every process needs "
                              "at least one seed", field="seeds")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.run = RunDir(self.out, writer=dist.is_main, create=False)  # created in run_all (Trainer's order)
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

    @classmethod
    def run(cls, trainer_cls, cfg) -> dict:
        """Validate ``cfg`` and train every seed of ``cfg.seeds`` stacked (under torchrun: each process
        its share of the seeds); returns the aggregate summary (out/summary.json)."""
        return run_in_process_group(cfg, lambda dist: cls(trainer_cls, cfg, dist))

    # ---- what a method provides -------------------------------------------------------------
    def bind(self) -> None:
        """Stack the replicas' networks and optimizers (after start or restore)."""
        raise NotImplementedError

    def loop(self) -> None:
        """The algorithm, every replica in lockstep, from wherever the replicas' counters stand;
        calls :meth:`checkpoint`."""
        raise NotImplementedError

    def seed_curve(self, records: list[dict]) -> tuple[list, list]:
        """One seed's line in the seeds plot, from its metrics.jsonl records."""
        gens = [r for r in records if r["type"] == "generation"]
        return [r["generation"] for r in gens], [r["test_accuracy"] for r in gens]

    # ---- checkpoint ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return config_fingerprint(self.cfg, VOLATILE_FIELDS)

    @property
    def checkpoint_path(self) -> Path:
        """One file per process (each holds its share of the replicas)."""
        if self.dist.world_size == 1:
            return self.run.checkpoint_path
        return self.run.checkpoint_path.with_name(f"rank{self.dist.rank}-of-{self.dist.world_size}.pt")

    def check_losses(self, losses: dict, where: str) -> None:
        """Trainer.check_losses for the replicas' epoch losses (``losses`` names each one's seed)."""
        check_finite_losses(losses, where=where, dist=self.dist, checkpoint=self.checkpoint_path)

    def checkpoint(self) -> None:
        replicas = [_cloned({**t.state(), "metrics_lines": t.metrics_lines}) for t in self.trainers]
        save_checkpoint(self.checkpoint_path, {
            "method": f"{self.method}-seeds", "config": self.fingerprint(), "world_size": self.dist.world_size,
            "seeds": self.my_seeds, "replicas": replicas, "rng": get_rng_state()}, keep=self.cfg.keep)

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

    # ---- the run -----------------------------------------------------------------------------
    def run_all(self) -> dict:
        cfg = self.cfg
        for run in [self.run] + [t.run for t in self.trainers]:
            run.create()
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
        return aggregate_seeds(self.run, cfg.seeds, self.method, self.dist, settings=self.trainers[0].summary_settings,
                               seed_curve=self.seed_curve, curve_labels=self.curve_labels)

    def say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[{self.method}] {message}", flush=True)
