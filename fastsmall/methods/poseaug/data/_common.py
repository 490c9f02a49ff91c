"""Helpers shared by the PoseAug loaders: one error type and checked npz access."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["DataFormatError", "MissingKeyError", "open_npz", "npz_get", "check_array"]


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the loader expects."""


class MissingKeyError(DataFormatError, KeyError):
    """A required key is absent (a ``KeyError`` too, so ``except KeyError`` also catches it)."""

    def __str__(self) -> str:  # KeyError would print the message repr-quoted
        return str(self.args[0]) if self.args else ""


def open_npz(path: str | Path, what: str = "data file"):
    """``np.load`` with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return np.load(path, allow_pickle=True)
    except Exception as exc:  # numpy raises several types for a corrupt file
        raise DataFormatError(f"{path}: cannot be read as .npz ({exc})") from None


def npz_get(npz, path: str | Path, key: str):
    if key not in npz.files:
        raise MissingKeyError(f"{path}: missing key {key!r} (has {sorted(npz.files)})")
    return npz[key]


def check_array(a: np.ndarray, path: str | Path, key: str, shape: tuple) -> np.ndarray:
    """Check ``a``'s shape against ``shape`` (ints, tuples of allowed ints, or None for any)."""
    a = np.asarray(a)
    ok = a.ndim == len(shape) and all(
        s is None or (d in s if isinstance(s, tuple) else d == s) for d, s in zip(a.shape, shape))
    if not ok:
        want = "[" + ", ".join("N" if s is None else "|".join(map(str, s)) if isinstance(s, tuple) else str(s)
                               for s in shape) + "]"
        raise DataFormatError(f"{path}: key {key!r} must have shape {want}, got {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.number):
        raise DataFormatError(f"{path}: key {key!r} must be numeric, got dtype {a.dtype}")
    return a
