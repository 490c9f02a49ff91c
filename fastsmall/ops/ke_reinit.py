"""The masked re-initialisation family: ke_reinit_ (Knowledge Evolution) and masked_mul_ (DSD).

Followable through five files with matching names:
  csrc/fastsmall.cpp (schemas) -> csrc/cpu/ke_reinit_cpu.cpp (CPU kernels)
  -> fastsmall/kernels/ke_reinit.py (Triton kernels) -> this file (fakes, CUDA
  registration, public wrappers) -> fastsmall/reference.py (reference),
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
from ..masks import KELS, WELS, check_encoded, check_init, check_int64, check_tensor_list, encode
from ._backend import BACKENDS, OPS, REFERENCE, select

__all__ = ["ke_reinit_", "masked_mul_", "KELS", "WELS"]


# ---- fakes: the ops return nothing; they check their arguments as the kernels do ------------

def _fake_ke_reinit_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, seed, generation, init):
    check_encoded(tensors, masks, kels_out, kels_in, wels_rate, wels_seed, init)


def _fake_masked_mul_(tensors, masks, kels_out, kels_in, wels_rate, wels_seed):
    check_encoded(tensors, masks, kels_out, kels_in, wels_rate, wels_seed)


_FAKES = {"ke_reinit_": _fake_ke_reinit_, "masked_mul_": _fake_masked_mul_}


# ---- registration ------------------------------------------------------------------------------

_triton = None  # Triton launchers (fastsmall.kernels.ke_reinit), when Triton imports
if ext.TRITON_ERROR is None:
    from ..kernels import ke_reinit as _triton


def _bump_versions_then(op):
    """ADInplaceOrView kernel: bump the version counters of the mutated tensors, as every
    in-place aten op does (and as torch.library.custom_op registers for mutable ops), so
    autograd notices a tensor saved for backward being overwritten."""
    below = torch._C._after_ADInplaceOrView_keyset

    def kernel(keyset, tensors, *args):
        torch.autograd.graph.increment_version(tensors)
        return op.redispatch(keyset & below, tensors, *args)

    return kernel


_lib = None
if ext.C is not None:
    _lib = torch.library.Library("fastsmall", "IMPL")  # holds the ADInplaceOrView registrations
    for _name, _fake in _FAKES.items():
        _qualname = f"fastsmall::{_name}"
        torch.library.register_fake(_qualname)(_fake)
        _lib.impl(_name, _bump_versions_then(getattr(torch.ops.fastsmall, _name).default), "ADInplaceOrView",
                  with_keyset=True)
        if _triton is not None:
            torch.library.register_kernel(_qualname, "cuda", getattr(_triton, _name))


# ---- public API ---------------------------------------------------------------------------------

def _check_backend_name(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


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
    tensors = check_tensor_list(tensors)
    init = check_init(init)
    seed = check_int64(seed, "seed")
    generation = check_int64(generation, "generation")
    enc = encode(tensors, masks, init)
    _check_backend_name(backend)
    if not tensors:
        return None
    impl = select(backend, tensors[0], "tensors[0]")
    with torch.no_grad():
        if impl == OPS:
            torch.ops.fastsmall.ke_reinit_(tensors, *enc, seed, generation, init)
        elif impl == REFERENCE:
            reference.ke_reinit_(tensors, masks, seed, generation, init)
        else:  # the launcher called directly: bump the versions as the registered op does
            torch.autograd.graph.increment_version(tensors)
            _triton.ke_reinit_(tensors, *enc, seed, generation, init)
    return None


def masked_mul_(tensors, masks, *, backend: str | None = None) -> None:
    """DSD's sparse-phase step in place: ``W *= keep`` for every tensor of the list.

    Same ``tensors`` and ``masks`` as :func:`ke_reinit_` (bool tensors, KELS or WELS).
    Not-kept elements become ``W * 0`` (as ``W.mul_(mask)``: a signed zero, NaN
    for inf/NaN), kept elements are not written. Returns None.
    """
    tensors = check_tensor_list(tensors)
    enc = encode(tensors, masks)
    _check_backend_name(backend)
    if not tensors:
        return None
    impl = select(backend, tensors[0], "tensors[0]")
    with torch.no_grad():
        if impl == OPS:
            torch.ops.fastsmall.masked_mul_(tensors, *enc)
        elif impl == REFERENCE:
            reference.masked_mul_(tensors, masks)
        else:
            torch.autograd.graph.increment_version(tensors)
            _triton.masked_mul_(tensors, *enc)
    return None
