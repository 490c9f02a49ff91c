"""Helpers shared by the PoseAug loaders: one error type and checked npz access.

Files are read with ``allow_pickle=False``: nothing in a data file can run code. The one
released format that stores pickled dicts (VideoPose3D's H36M files) goes through
``fastsmall.methods.common.safe_npz``, which builds only numpy arrays from a pickle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...common.safe_npz import read_object_array_checked

__all__ = ["DataFormatError", "MissingKeyError", "open_npz", "npz_get", "npz_dict", "check_array"]


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
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a corrupt file
        raise DataFormatError(f"{path}: cannot be read as .npz ({exc})") from None


def npz_get(npz, path: str | Path, key: str):
    if key not in npz.files:
        raise MissingKeyError(f"{path}: missing key {key!r} (has {sorted(npz.files)})")
    try:
        return npz[key]
    except ValueError as exc:  # an object array: numpy refuses to unpickle it (allow_pickle=False)
        raise DataFormatError(f"{path}: key {key!r} holds pickled objects, which fastsmall does not load here "
                              f"({exc}); store it as a numeric array") from None


def npz_dict(npz, path: str | Path, key: str) -> dict:
    """A dict stored as a 0-d object array (VideoPose3D's format), read without running code."""
    if key not in npz.files:
        raise MissingKeyError(f"{path}: missing key {key!r} (has {sorted(npz.files)})")
    try:
        obj = read_object_array_checked(path, key)
    except ValueError as exc:
        raise DataFormatError(str(exc)) from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: key {key!r} must hold a dict subject -> action -> array, "
                              f"got {type(obj).__name__}")
    return obj


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
    bad = a.size - int(np.isfinite(a).sum())
    if bad:
        raise DataFormatError(f"{path}: key {key!r} has {bad} non-finite values (NaN or inf)")
    return a
