"""Seeding and capturing every RNG a training step uses, for exact resumption.

States are stored as tensors and plain numbers so checkpoints load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps): one independent stream per
    (seed, generation/stage, epoch, rank, purpose), so a resumed epoch replays exactly."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, NumPy and torch (CPU, CUDA) generator states."""
    version, keys, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_keys": torch.tensor(keys, dtype=torch.int64),
        "python_gauss": math.nan if gauss is None else float(gauss),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_gauss": float(np_gauss) if np_has_gauss else math.nan,
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    gauss = state["python_gauss"]
    random.setstate((3, tuple(int(v) for v in state["python_keys"].tolist()), None if math.isnan(gauss) else gauss))
    np_gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         0 if math.isnan(np_gauss) else 1, 0.0 if math.isnan(np_gauss) else np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
