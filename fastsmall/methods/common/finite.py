"""Stopping a run whose training loss became NaN or infinite (a diverged run), the same way in
every method: :func:`check_finite_losses` raises :class:`NonFiniteLossError`, naming where (the
generation / stage and epoch, numbered as in metrics.jsonl) and which loss, before the epoch is
logged or checkpointed -- the run's last checkpoint stays the last good one. The command line
reports it in one line with exit status 2 (``cli.USER_ERRORS``).

Cost: one check per epoch, on the epoch's mean losses the trainers already read back for
metrics.jsonl (a NaN or inf in any step makes the mean non-finite), plus one all-reduce of a
0/1 flag under torchrun, so that every rank stops at the same epoch (ranks see their own shares
of a batch; without it one rank could stop while another waits in the next collective). No
extra device synchronisation per step.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["NonFiniteLossError", "check_finite_losses"]


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite; the message says where and which checkpoint is
    the last good one."""


def _bad(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not math.isfinite(v)}


def check_finite_losses(losses: dict, *, where: str, dist=None, checkpoint: Path | None = None) -> None:
    """Raise :class:`NonFiniteLossError` when a value of ``losses`` (name -> float, an epoch's
    means) is NaN or infinite on this process or, under torchrun (``dist.enabled``), on any other.
    ``where`` names the epoch (``"generation 1, epoch 3"``); ``checkpoint`` is the run's last
    checkpoint, named in the message when it exists."""
    bad = _bad(losses)
    if dist is not None and getattr(dist, "enabled", False):
        flag = dist.all_reduce_sum(torch.tensor([1.0 if bad else 0.0], dtype=torch.float64, device=dist.device))
        if float(flag.sum()) == 0:
            return
        if not bad:  # another rank's loss diverged (the same step, its share of the batch)
            raise NonFiniteLossError(f"the training loss became non-finite in {where} on another process; the run "
                                     f"stopped there{_kept(checkpoint)}")
    elif not bad:
        return
    values = ", ".join(f"{k} = {v}" for k, v in bad.items())
    raise NonFiniteLossError(f"the training loss became non-finite in {where} ({values}); the run stopped there, "
                             f"before logging or checkpointing that epoch{_kept(checkpoint)}. A smaller learning "
                             f"rate may help")


def _kept(checkpoint: Path | None) -> str:
    if checkpoint is None:
        return ""
    if Path(checkpoint).exists():
        return f"; its last good checkpoint is {checkpoint}"
    return "; no checkpoint was written yet"
