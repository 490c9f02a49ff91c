"""Loading the compiled extension (fastsmall._C) and the Triton backend.

Importing fastsmall never fails because of a missing backend: without the C++
extension (or without Triton, for CUDA tensors) the ops fall back to the
plain-PyTorch reference with a one-time warning. Set FASTSMALL_REQUIRE_EXTENSION=1
(CI does) to make a missing or broken extension an error instead.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
BUILD_INFO_FILE = _HERE / "_build_info.json"

#: Why the C++ extension is unusable (None when it loaded).
CPP_ERROR: str | None = None
#: fastsmall._C when it loaded.
C = None
#: Why Triton is unusable (None when it imported).
TRITON_ERROR: str | None = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())


def build_info() -> dict:
    """What setup.py recorded about the build ({} when there is no record)."""
    try:
        return json.loads(BUILD_INFO_FILE.read_text())
    except (OSError, ValueError):
        return {}


def mismatch(info: dict, torch_version: str) -> str | None:
    """Why an extension built as ``info`` says cannot load under ``torch_version`` (None if it can)."""
    built = info.get("torch_version")
    if built is not None and _version_tuple(built)[:2] != _version_tuple(torch_version)[:2]:
        return (
            f"the C++ extension was built against torch {built} but torch {torch_version} is "
            "installed; rebuild it with `pip install --no-build-isolation -e .`"
        )
    return None


def _load_cpp():
    # Check before loading: a library built against another torch usually fails
    # with an unreadable undefined-symbol error, or worse, loads and misbehaves.
    error = mismatch(build_info(), torch.__version__)
    if error is not None:
        return None, error
    try:
        module = importlib.import_module("fastsmall._C")
    except ImportError as exc:
        return None, (
            f"the C++ extension fastsmall._C is not available ({exc}); build it with "
            "`pip install --no-build-isolation -e .`"
        )
    return module, None


def _load_triton():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({exc})"
    return None


C, CPP_ERROR = _load_cpp()
TRITON_ERROR = _load_triton()

if CPP_ERROR is not None and _flag("FASTSMALL_REQUIRE_EXTENSION"):
    raise ImportError(f"fastsmall: FASTSMALL_REQUIRE_EXTENSION=1 but {CPP_ERROR}")


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors only under TRITON_INTERPRET=1."""
    return _flag("TRITON_INTERPRET")


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
