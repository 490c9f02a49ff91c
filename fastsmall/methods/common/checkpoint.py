"""Atomic checkpoints: write to a temporary file in the same folder, fsync, rename.

A run killed at any moment (SIGKILL included) leaves either the previous complete
checkpoint or the new complete one, never a torn file. Checkpoints hold only
tensors and plain containers, so they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or belongs to another run; the message says which."""


def save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, *, expect: dict | None = None, map_location="cpu") -> dict:
    """Load a checkpoint; ``expect`` maps keys to the values this run needs them to have."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a fastsmall checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path} does not match this run: {key} is {state.get(key)!r}, expected {value!r}"
            )
    return state
