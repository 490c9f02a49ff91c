"""The masked re-initialisation family: ke_reinit_ (Knowledge Evolution) and masked_mul_ (DSD).

One op lives in five files with matching names:
  csrc/fastsmall.cpp (schemas) -> csrc/cpu/ke_reinit_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/ke_reinit.py (Triton kernels) -> this file (the op table: checks,
  fakes, in-place registration; public wrappers) -> fastsmall/reference/ke_reinit.py (reference),
  tested in tests/test_ke_reinit.py and benchmarked in bench/bench_ke_reinit.py.
The mask kinds, the counter-based RNG and the initialisers are defined in
fastsmall/masks.py (shared by all of them, as fastsmall/skeleton.py is for KCS).

Both ops update a *list* of tensors in place in one call: one parallel loop
on CPU, one kernel launch per dtype on GPU (one for a whole model). They are
not differentiable: the wrappers run them under ``torch.no_grad()``, so
``nn.Parameter`` leaves can be passed directly.
"""
from __future__ import annotations

import torch

from .. import _extension as ext
from .. import reference
from ..masks import KELS, WELS, as_int64, as_tensor_list, check_encoded, check_init, check_int64, decode, encode
from ._dispatch import Family, OpDef, check_backend

__all__ = ["ke_reinit_", "masked_mul_", "KELS", "WELS"]


# ---- checks of the ops' arguments (see ._dispatch for where they run) ----------------------------

def _check_ke_reinit_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, seed, generation, init):
    check_init(init)
    check_int64(seed, "seed")
    check_int64(generation, "generation")
    check_encoded(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, init)


# ---- references with the ops' signatures (the masks decoded back to mask objects) -----------------

def _reference_ke_reinit_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, seed, generation, init):
    reference.ke_reinit_(tensors, decode(masks, kels_out, kels_in, wels_rate, wels_seed), seed, generation, init)


def _reference_masked_mul_(tensors, *encoded):
    reference.masked_mul_(tensors, decode(*encoded))


# ---- the op table: in-place ops, no autograd (the wrappers run them under no_grad) ---------------

_triton = None  # Triton launchers (fastsmall.kernels.ke_reinit), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import ke_reinit as _triton

_MASKED = Family([
    OpDef("ke_reinit_", _check_ke_reinit_, reference=_reference_ke_reinit_, mutates=True),
    OpDef("masked_mul_", check_encoded, reference=_reference_masked_mul_, mutates=True),
], _triton)


# ---- public API ---------------------------------------------------------------------------------

def ke_reinit_(tensors, masks, seed: int, generation: int = 0, init: str = "torch_default", *,
               backend: str | None = None) -> None:
    """Re-initialise the not-kept part of every tensor in place: ``W = where(keep, W, R)``.

    ``tensors``: list of contiguous float tensors (float32/float64/float16/bfloat16, on one
    device; e.g. a model's conv/linear weights, ``nn.Parameter`` leaves are fine).
    ``masks[i]`` says which elements of ``tensors[i]`` are kept (the fit hypothesis):
    a bool tensor shaped like it, ``KELS(k_out, k_in)`` (keep ``W[:k_out, :k_in]``) or
    ``WELS(rate, seed)`` (keep each weight with probability ``rate``, fixed by its seed).

    ``R`` is drawn inside the kernels from a counter-based RNG keyed by ``(seed,
    generation, i, element)``: no random temporaries, the same bits on every backend,
    and a different draw for every generation. ``init``: ``"torch_default"`` (U(±1/sqrt(fan_in)),
    nn.Conv/Linear's default, the official KE reset), ``"kaiming_normal"`` (N(0, 2/fan_in))
    or ``"zero"``; fan_in = size(1) * prod(size(2:)). Kept elements keep their exact bits
    (a select, never arithmetic on them). Definitions: fastsmall/masks.py. Returns None.
    """
    tensors = as_tensor_list(tensors)
    seed, generation = as_int64(seed, "seed"), as_int64(generation, "generation")
    enc = encode(tensors, masks)  # the mask objects, which no kernel sees, as the op's lists
    check_backend(backend)
    if not tensors:
        _check_ke_reinit_(tensors, *enc, seed, generation, init)  # nothing to run: no kernel checks the rest
        return None
    with torch.no_grad():
        _MASKED.route("ke_reinit_", backend, tensors[0], "tensors[0]")(tensors, *enc, seed, generation, init)
    return None


def masked_mul_(tensors, masks, *, backend: str | None = None) -> None:
    """DSD's sparse-phase step in place: ``W *= keep`` for every tensor of the list.

    Same ``tensors`` and ``masks`` as :func:`ke_reinit_` (bool tensors, KELS or WELS).
    Not-kept elements become ``W * 0`` (as ``W.mul_(mask)``: a signed zero, NaN
    for inf/NaN), kept elements are not written. Returns None.
    """
    tensors = as_tensor_list(tensors)
    enc = encode(tensors, masks)
    check_backend(backend)
    if not tensors:
        return None
    with torch.no_grad():
        _MASKED.route("masked_mul_", backend, tensors[0], "tensors[0]")(tensors, *enc)
    return None
