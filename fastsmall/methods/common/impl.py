"""``--impl``: which kernels a method's trainer runs, chosen once when the trainer is built.

Every method has two implementations of its hot steps behind one interface:

* ``fused`` (the default): fastsmall's ops, in ``methods/<method>/kernels.py``;
* ``official``: the released code's arithmetic, kept as the baseline of the parity tests
  and benchmarks, in ``methods/<method>/official.py`` next to the code it mirrors.

The trainer asks :func:`choose` for one object and calls it; no training loop tests
``impl``. (``reference`` is a word of the ops only: the plain-PyTorch definition of an op.)
"""
from __future__ import annotations

import warnings

IMPLS = ("fused", "official")


def canonical_impl(impl: str) -> str:
    """``impl`` checked; the old name ``"reference"`` is accepted as ``"official"`` with a warning."""
    if impl == "reference":
        warnings.warn("impl='reference' is deprecated; use impl='official'", FutureWarning, stacklevel=3)
        return "official"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    return impl


def choose(impl: str, *, fused, official):
    """``fused`` or ``official`` (classes, or any factories) for ``impl``."""
    return fused if canonical_impl(impl) == "fused" else official
