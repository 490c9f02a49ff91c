"""Choosing a backend per call, and binding autograd formulas to a kernel set.

Backends (the ``backend=`` argument of every op in fastsmall.ops):

* ``None`` (default): CPU tensors -> C++ kernels, CUDA tensors -> Triton kernels, both
  through the registered ``torch.ops.fastsmall`` ops. Falls back to the reference
  with a one-time warning when the extension (or, on CUDA, Triton) is missing.
* ``"cpp"``: the C++ kernels; CPU tensors only.
* ``"triton"``: the Triton kernels. On CUDA through ``torch.ops.fastsmall``; on CPU
  tensors only under ``TRITON_INTERPRET=1`` (how CI tests them), called directly.
* ``"reference"``: the plain-PyTorch reference (fastsmall.reference).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.autograd.function import once_differentiable

from .. import _extension as ext

OPS, TRITON_DIRECT, REFERENCE = "ops", "triton-direct", "reference"
BACKENDS = (None, "cpp", "triton", "reference")


def select(backend: str | None, t: torch.Tensor, name: str) -> str:
    """Which implementation serves a call whose main tensor argument ``name`` is ``t``."""
    device = t.device.type
    if backend is None:
        if ext.C is None:
            ext.warn_once("cpp", f"fastsmall: {ext.CPP_ERROR}; using the plain-PyTorch reference instead")
            return REFERENCE
        if device == "cpu":
            return OPS
        if device == "cuda":
            if ext.TRITON_ERROR is None:
                return OPS
            ext.warn_once("triton", f"fastsmall: {ext.TRITON_ERROR}; using the plain-PyTorch reference on CUDA")
            return REFERENCE
        ext.warn_once(f"device-{device}", f"fastsmall: no kernels for {device} tensors; using the reference")
        return REFERENCE
    if backend == "reference":
        return REFERENCE
    if backend == "cpp":
        if device != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, but {name} is on {t.device}")
        if ext.C is None:
            raise RuntimeError(f"backend='cpp' is unavailable: {ext.CPP_ERROR}")
        return OPS
    if backend == "triton":
        if ext.TRITON_ERROR is not None:
            raise RuntimeError(f"backend='triton' is unavailable: {ext.TRITON_ERROR}")
        if device == "cuda":
            return OPS if ext.C is not None else TRITON_DIRECT
        if device == "cpu":
            if not ext.triton_interpreted():
                raise RuntimeError(
                    f"backend='triton' needs CUDA tensors ({name} is on {t.device}); on CPU it runs only "
                    "under the Triton interpreter (set TRITON_INTERPRET=1 before importing fastsmall)"
                )
            return TRITON_DIRECT
        raise ValueError(f"backend='triton' runs on CUDA tensors, but {name} is on {t.device}")
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def autograd_function(name: str, forward, formulas) -> type[torch.autograd.Function]:
    """An autograd.Function from a forward kernel and (setup_context, backward) formulas.

    The same formulas are registered on the torch.ops.fastsmall op with
    torch.library.register_autograd, bound to the op's own backward kernels; here
    they are bound to the Triton launchers, for calling Triton on CPU tensors.
    """
    setup_context, backward = formulas
    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(once_differentiable(backward)),
    })


def register_family(formulas: dict, fakes: dict, triton_module) -> None:
    """Register an op family on torch.ops.fastsmall: a fake per op, autograd formulas bound
    to the ops' own backward kernels, and the Triton launchers as the CUDA kernels."""
    if ext.C is None:
        return
    for name, make_formulas in formulas.items():
        qualname = f"fastsmall::{name}"
        torch.library.register_fake(qualname)(fakes[name])
        setup_context, backward = make_formulas(torch.ops.fastsmall)
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
        if triton_module is not None:
            torch.library.register_kernel(qualname, "cuda", getattr(triton_module, name))


def triton_direct(names, formulas: dict, triton_module) -> SimpleNamespace:
    """The ops ``names`` as autograd functions over the Triton launchers, for calling Triton
    directly (CPU tensors under TRITON_INTERPRET=1, or CUDA without the extension)."""
    out = SimpleNamespace()
    if triton_module is not None:
        for name in names:
            setattr(out, name, autograd_function(f"_Triton_{name}", getattr(triton_module, name),
                                                 formulas[name](triton_module)).apply)
    return out
