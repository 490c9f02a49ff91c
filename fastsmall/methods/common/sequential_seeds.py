"""``--seeds S1 S2 ...`` for a method whose replicas do not gain from being stacked: every seed is
its own single-seed run, one after another in this process, with the output and the aggregate of
a stacked run (``stacked.py``)::

    summary = SequentialSeeds.run(MyTrainer, cfg)

Why not stacked: PoseAug's networks are a few wide fully connected layers at batch 1,024, so a step
is GEMM-bound, not overhead-bound; ``vmap`` over K replicas turns each GEMM into a batched one that
runs *slower* on a CPU than K separate ones (SimpleBaseline, K = 8: 0.72x; ``bench/bench_seeds.py
--methods poseaug``). What one command gives over K: one ``--resume`` continues the whole set, and
the aggregate over the seeds is written at the end (each seed still loads its own data).

Each seed runs exactly as ``--seed S --out out/seed-S`` (``Trainer.run_all``: its own checkpoint,
its own resume, bit for bit the single-seed run); ``--resume`` skips nothing by hand -- a finished
seed restores its final checkpoint and only rewrites its summary. Under torchrun every process takes
``seeds[rank::world]`` and trains them alone; rank 0 writes the aggregate. That is PoseAug's speed
lever on a CPU: two one-thread processes finished two seeds 1.45x sooner than one two-thread process
(``bench/bench_seed_processes.py``), since a GEMM of this size gains ~1.4x from a second thread.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .checkpoint import CheckpointError, config_difference, has_checkpoint
from .config import ConfigError, config_fingerprint
from .distributed import Distributed
from .rundir import RunDir
from .seeds import seed_dir_name
from .stacked import aggregate_seeds
from .trainer import VOLATILE_FIELDS, run_in_process_group

__all__ = ["SequentialSeeds"]


class SequentialSeeds:
    """Train ``trainer_cls`` for every seed of ``cfg.seeds``, one after another (module docstring).
    The trainer class provides ``seed_curve(records)``, ``curve_labels`` and ``seed_metrics(summary)``
    (the flat numbers the aggregate averages)."""

    def __init__(self, trainer_cls, cfg, dist: Distributed, **trainer_kwargs):
        self.trainer_cls, self.trainer_kwargs = trainer_cls, trainer_kwargs
        self.cfg, self.out, self.dist = cfg, Path(cfg.out), dist
        self.my_seeds = list(cfg.seeds)[dist.rank::dist.world_size]
        if not self.my_seeds:
            raise ConfigError(f"seeds: {len(cfg.seeds)} seeds for {dist.world_size} processes; every process needs "
                              "at least one seed", field="seeds")
        self.run = RunDir(self.out, writer=dist.is_main, create=False)
        self.alone = Distributed.alone(dist.device, dist.timeout)
        # the first seed's trainer is built now: the data and budget checks fail before anything is written
        self._first = self._trainer(self.my_seeds[0])
        self.method = self._first.method

    @classmethod
    def run(cls, trainer_cls, cfg, **trainer_kwargs) -> dict:
        """Validate ``cfg``, train every seed of ``cfg.seeds`` (under torchrun: each process its
        share), return the aggregate summary (out/summary.json)."""
        return run_in_process_group(cfg, lambda dist: cls(trainer_cls, cfg, dist, **trainer_kwargs))

    def _trainer(self, seed: int):
        one = dataclasses.replace(self.cfg, seed=seed, seeds=[], out=str(self.out / seed_dir_name(seed)))
        trainer = self.trainer_cls(one, self.alone, **self.trainer_kwargs)
        trainer.say = (lambda message, _m=trainer.method:
                       None if self.cfg.quiet else print(f"[{_m} seed {seed}] {message}", flush=True))
        return trainer

    def _check_out(self) -> None:
        """Refuse what would mix runs: ``out`` holding a single-seed run, or (without --resume) a seed
        directory that already holds one."""
        if (self.out / "metrics.jsonl").is_file() or has_checkpoint(self.run.checkpoint_path):
            raise CheckpointError(f"{self.out} holds a single-seed run (metrics.jsonl / checkpoints at its top); "
                                  "--seeds writes out/seed-S/: pass another out")
        config = self.out / "config.json"
        if self.cfg.resume and config.is_file():  # the set of seeds and their settings as started
            saved = {k: v for k, v in json.loads(config.read_text()).items() if k not in VOLATILE_FIELDS}
            current = config_fingerprint(self.cfg, VOLATILE_FIELDS)
            if saved != json.loads(current):
                raise CheckpointError(f"{config} does not match this run: "
                                      f"{config_difference(json.dumps(saved, sort_keys=True), current)}")
        if not self.cfg.resume:
            for seed in self.my_seeds:
                if RunDir(self.out / seed_dir_name(seed), writer=False).read_metrics():
                    raise CheckpointError(f"{self.out} already holds a run (seed {seed}); pass resume=True "
                                          "(--resume) or another out")

    def run_all(self) -> dict:
        self._check_out()
        self.run.create()
        if not self.cfg.resume or not (self.out / "config.json").is_file():
            self.run.write_config(self.cfg)
        for i, seed in enumerate(self.my_seeds):
            trainer, self._first = (self._first or self._trainer(seed)), None
            trainer.say(f"seed {i + 1} of {len(self.my_seeds)}" + (
                f" on this process (rank {self.dist.rank})" if self.dist.world_size > 1 else ""))
            trainer.run_all()
            del trainer  # its data and models go before the next seed's are built
        return aggregate_seeds(self.run, self.cfg.seeds, self.method, self.dist,
                               settings=self.trainer_cls.summary_settings, seed_curve=self.trainer_cls.seed_curve,
                               curve_labels=self.trainer_cls.curve_labels,
                               seed_metrics=self.trainer_cls.seed_metrics)
