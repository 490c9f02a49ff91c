"""The resumable trainer every method subclasses.

It owns what is the same for every method -- the run directory, the config fingerprint
guard, resume-or-new, atomic checkpoint and exact restore (RNG state included), the
metrics log and torchrun's process group -- so a method's ``train.py`` keeps only its
algorithm::

    class MyTrainer(Trainer):
        method = "mine"
        def start(self): ...             # a new run: build models, optimizers
        def state(self) -> dict: ...     # what a checkpoint must hold to resume exactly
        def load_state(self, state): ... # rebuild from it (a resumed run)
        def loop(self): ...              # the algorithm box; calls self.log() and self.checkpoint()
        def summary(self) -> dict: ...

    summary = run_trainer(MyTrainer, cfg)

A checkpoint records the method, the config fingerprint (the config without the fields
that may change between a run and its resumption) and the world size; a resume with
another config or another number of processes is refused with a :class:`CheckpointError`.
``metrics.jsonl`` is truncated on resume to the lines the checkpoint had seen, so a run
killed at any moment and resumed writes exactly the lines of an uninterrupted run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, has_checkpoint, load_latest_checkpoint, save_checkpoint
from .config import ConfigError, config_fingerprint, soft_notes, validate_config
from .distributed import DEFAULT_TIMEOUT_S, Distributed, is_timeout
from .finite import check_finite_losses
from .progress import progress
from .rng import get_rng_state, set_rng_state
from .rundir import RunDir

# config fields that may change between a run and its resumption
VOLATILE_FIELDS = ("resume", "quiet", "out", "device", "compile", "dist_timeout", "tensorboard",
                   "check_counts", "keep")  # (check_counts admits or refuses data, never changes it)


def check_tensorboard(cfg) -> bool:
    """``cfg.tensorboard``, after checking the package is there (a ConfigError naming the flag, before
    anything is written, when it is not)."""
    if not getattr(cfg, "tensorboard", False):
        return False
    from .metrics_log import tensorboard_available
    if not tensorboard_available():
        raise ConfigError("tensorboard needs TensorBoard, which is not installed (pip install TensorBoard)",
                          field="tensorboard")
    return True


class TrainResult(dict):
    """What a method's ``train(cfg)`` returns: the summary itself (this dict, exactly what
    ``summary.json`` holds, so ``result["test_accuracy"]`` works as before) plus the trained
    models and the run directory::

        result = ke.train(ke.Config(out="runs/ke"))
        result.model                  # the trained network (result.models: every trained module by name)
        result.run_dir / "plots"      # pathlib.Path
        result.summary                # a plain dict copy
    """

    def __init__(self, summary: dict, *, models: dict | None = None, run_dir=None):
        super().__init__(summary)
        self.models = dict(models or {})
        self.run_dir = None if run_dir is None else Path(run_dir)

    @property
    def summary(self) -> dict:
        return dict(self)

    @property
    def model(self):
        """The method's main trained network (the first of ``models``); None when there is none."""
        return next(iter(self.models.values()), None)

    def __repr__(self) -> str:
        return (f"TrainResult(summary={dict.__repr__(self)}, models={list(self.models)}, "
                f"run_dir={str(self.run_dir) if self.run_dir else None!r})")


def resume_point(state: dict) -> str:
    """Where a checkpoint stands, from the progress counters it holds (``generation 2, epoch 0``)."""
    shown = {**state, "generation": state.get("generation_number", state.get("generation"))}  # as the logs number it
    counters = [f"{key} {shown[key]}" for key in ("stage", "generation", "epoch", "step", "iteration")
                if isinstance(shown.get(key), (int, str)) and not isinstance(shown.get(key), bool)]
    return ", ".join(counters) if counters else f"{state.get('metrics_lines', 0)} logged records"


class Trainer:
    method = "method"  # the name in checkpoints and log lines
    summary_settings: tuple = ()  # summary entries that are configuration (--seeds reports them once)

    def __init__(self, cfg, dist: Distributed):
        self.cfg, self.dist = cfg, dist
        self.device = torch.device(cfg.device)
        # checked now (an --out that names a file is an error before the data loads), created in
        # run_all: nothing is written before the method's own checks (data, budget) have passed
        self.run = RunDir(cfg.out, writer=dist.is_main, create=False)
        self.run.tensorboard = check_tensorboard(cfg)
        self.metrics_lines = 0

    # ---- what a method provides -----------------------------------------------------------
    def start(self) -> None:
        """A new run: build the models and optimizers (a resumed run calls :meth:`load_state`)."""
        raise NotImplementedError

    def state(self) -> dict:
        """The algorithm's state for a checkpoint: tensors and plain containers only."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`'s dict into a trainer that has not run :meth:`start`."""
        raise NotImplementedError

    def loop(self) -> None:
        """The algorithm, from wherever the progress counters stand (0 for a new run)."""
        raise NotImplementedError

    def summary(self) -> dict:
        raise NotImplementedError

    def plot(self) -> None:
        """Plots of the finished run (main process only)."""

    def trained_models(self) -> dict:
        """The trained modules by name, the main network first (``TrainResult.models``)."""
        return {}

    @staticmethod
    def seed_metrics(summary: dict) -> dict:
        """The numbers ``--seeds`` averages over seeds, from one seed's summary (default: its
        top-level numbers; a method with nested results flattens them)."""
        return summary

    def fingerprint_extra(self) -> dict:
        """Settings outside the config that a resumed run must share (e.g. a mode flag)."""
        return {}

    # ---- shared machinery --------------------------------------------------------------
    def fingerprint(self) -> str:
        return config_fingerprint(self.cfg, VOLATILE_FIELDS, **self.fingerprint_extra())

    def checkpoint(self) -> None:
        """Write the resumable state atomically (main process only), keeping the ``cfg.keep`` latest."""
        if not self.dist.is_main:
            return
        save_checkpoint(self.run.checkpoint_path, {
            "method": self.method, "config": self.fingerprint(), "world_size": self.dist.world_size,
            "metrics_lines": self.metrics_lines, "rng": get_rng_state(), **self.state()}, keep=self.cfg.keep)

    def restore(self) -> None:
        """Resume from the latest verified checkpoint (the newest intact earlier one when the latest is corrupt)."""
        state, path, note = load_latest_checkpoint(self.run.checkpoint_path, map_location=self.device,
                                                   expect={"method": self.method, "config": self.fingerprint(),
                                                           "world_size": self.dist.world_size})
        if note:
            self.say(note)
        self.say(f"resuming from {path}, at {resume_point(state)}")
        self.metrics_lines = state["metrics_lines"]
        self.load_state(state)
        set_rng_state(state["rng"])  # last: rebuilding models above draws from the generators
        self.run.truncate_metrics(self.metrics_lines)

    def check_losses(self, losses: dict, where: str) -> None:
        """Stop the run with a NonFiniteLossError when an epoch's mean loss is NaN or infinite (on
        any rank), before that epoch is logged or checkpointed (``finite.py``: one check per epoch)."""
        check_finite_losses(losses, where=where, dist=self.dist, checkpoint=self.run.checkpoint_path)

    def log(self, record: dict) -> None:
        """Append one line to metrics.jsonl (counted, so a resume can truncate to it)."""
        self.run.log_metrics(record)
        self.metrics_lines += 1

    def say(self, message: str) -> None:
        """A line on stdout from the main process."""
        if self.dist.is_main:
            print(f"[{self.method}] {message}", flush=True)

    def progress(self, iterable, *, desc: str, total: int | None = None):
        return progress(iterable, desc=desc, total=total, quiet=self.cfg.quiet or not self.dist.is_main)

    def run_all(self) -> dict:
        """Resume from the run directory's checkpoint or start anew, run the loop, write the summary."""
        cfg = self.cfg
        self.run.create()
        for stale in self.run.remove_stale_temporaries():
            self.say(f"removed {stale}, left by an interrupted write")
        if cfg.resume and has_checkpoint(self.run.checkpoint_path):
            self.restore()
        else:
            if cfg.resume:
                self.say(f"no checkpoint in {cfg.out}; starting a new run")
            elif self.run.read_metrics():
                raise CheckpointError(f"{cfg.out} already holds a run; pass resume=True (--resume) or another out")
            self.run.write_config(cfg)
            self.run.truncate_metrics(0)
            self.start()
        self.loop()
        summary = self.summary()
        self.run.write_summary(summary)
        if self.dist.is_main:
            self.plot()
        return TrainResult(summary, models=self.trained_models(), run_dir=self.run.root)


def run_trainer(trainer_cls, cfg, **kwargs) -> dict:
    """Validate ``cfg``, join torchrun's process group (if any), train, return the summary."""
    return run_in_process_group(cfg, lambda dist: trainer_cls(cfg, dist, **kwargs))


def run_in_process_group(cfg, make) -> dict:
    """Validate ``cfg``, join torchrun's process group (if any), ``make(dist).run_all()``, leave the
    group; a collective that timed out becomes a DistributedTimeout naming --dist-timeout. Defaults
    that were scaled to fit the run (``config.soft_notes``) are said on stderr first, one line each."""
    validate_config(cfg)
    dist = Distributed(torch.device(cfg.device), timeout=getattr(cfg, "dist_timeout", DEFAULT_TIMEOUT_S))
    if dist.is_main:
        for note in soft_notes(cfg):
            print(f"note: {note}", file=sys.stderr, flush=True)
    finished = False
    try:
        summary = make(dist).run_all()
        finished = True
        return summary
    except RuntimeError as exc:
        if dist.enabled and is_timeout(exc):
            raise dist.timeout_error(exc) from None
        raise
    finally:
        dist.close(wait=finished)  # after an error a peer may never reach the barrier
