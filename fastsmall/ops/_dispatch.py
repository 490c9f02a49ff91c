"""One dispatch mechanism for every op: an op family is a table of ``OpDef``s, registered by ``Family``.

An ``OpDef`` describes one registered op (``torch.ops.fastsmall.<name>``, schema in
csrc/fastsmall.cpp) by its check, its fake outputs, its autograd formulas and its reference,
all with the op's own signature. ``Family(defs, triton_module)`` registers the fakes, the
autograd formulas (bound to the op's dedicated backward ops) of the ops whose autograd kernel is
not in C++ (csrc/autograd.cpp, same formulas), the ADInplaceOrView kernels of in-place ops and
the Triton launchers as CUDA kernels, and builds three routes per public op, each a callable with
the op's signature:

* ``OPS``: the registered op; the dispatcher picks the device kernel (C++ on CPU, Triton on CUDA);
* ``TRITON_DIRECT``: the Triton launchers bound to the same formulas, called without the
  dispatcher (CPU tensors under TRITON_INTERPRET=1, or CUDA without the C++ extension); the
  backward ops are autograd Functions too (``triton_kernel_set``), so double backward behaves as
  on the registered ops (a linear op's adjoint, or ``no_double_backward``'s error);
* ``REFERENCE``: the plain-PyTorch reference (fastsmall.reference).

A public wrapper converts what the kernels never see (a Skeleton, mask objects) and calls
``family.route(name, backend, tensor, tensor_name)(*op_args)``.

Where the checks run, once per call: the C++ kernels check their arguments themselves, so the
OPS route runs no Python check -- unless the kernel rejects the call; then the op's Python check
runs to raise the same ValueError / TypeError naming the argument as the other backends do. The
Triton launchers and the reference do not check: their routes (and the registered CUDA kernels)
run the op's check first. The fakes run it too (meta tensors, torch.compile).

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

import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import torch

from .. import _extension as ext
from .._checks import check_out, check_out_memory

OPS, TRITON_DIRECT, REFERENCE = "ops", "triton-direct", "reference"
BACKENDS = (None, "cpp", "triton", "reference")


def check_backend(backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def select(backend: str | None, t: torch.Tensor, name: str) -> str:
    """Which route serves a call whose main tensor argument ``name`` is ``t``."""
    if not isinstance(t, torch.Tensor):
        return REFERENCE  # whose check says what ``name`` should have been
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


@dataclass(frozen=True)
class OpDef:
    """One registered op, described with the op's own signature."""

    name: str
    #: validates the arguments; raises ValueError / TypeError naming the argument
    check: Callable
    #: output metadata of checked arguments (empty tensors shaped and strided as the kernels'); None: returns None
    outputs: Optional[Callable] = None
    #: ``k -> (setup_context, backward)`` with ``k`` torch.ops.fastsmall or the Triton launchers
    formulas: Optional[Callable] = None
    #: the reference, for a public op (None for the backward ops)
    reference: Optional[Callable] = None
    #: updates its first argument, a list of tensors, in place
    mutates: bool = False
    #: the keyword-only output arguments of the op's ``.out`` overload (bulk use, no autograd), if it has one
    out_names: tuple = ()


# ---- building blocks of the routes ---------------------------------------------------------------

def _checked(fn, check):
    """``fn`` behind the op's check: for kernels that do not check their arguments."""
    def call(*args):
        check(*args)
        return fn(*args)
    return call


def _diagnosed(op, check):
    """The registered op, whose kernels check their arguments; when a kernel rejects a call,
    the op's Python check says why with the ValueError / TypeError of the other routes."""
    def call(*args, **kwargs):
        try:
            return op(*args, **kwargs)
        except Exception:
            check(*args, **kwargs)
            raise
    return call


def _bumping_versions(fn):
    """Bump the version counters of the mutated tensors, as every in-place aten op does, so
    autograd notices a tensor saved for backward being overwritten."""
    def call(tensors, *args):
        torch.autograd.graph.increment_version(tensors)
        return fn(tensors, *args)
    return call


def _ad_inplace_or_view_kernel(op):
    """The ADInplaceOrView kernel of an in-place op: bump the versions, then redispatch below it
    (what torch.library.custom_op registers for mutable ops)."""
    below = torch._C._after_ADInplaceOrView_keyset

    def kernel(keyset, tensors, *args):
        torch.autograd.graph.increment_version(tensors)
        return op.redispatch(keyset & below, tensors, *args)

    return kernel


def autograd_function(name: str, forward, formulas) -> type[torch.autograd.Function]:
    """An autograd.Function from a forward kernel and ``(setup_context, backward)`` formulas.

    The backward is not ``once_differentiable``: under ``create_graph=True`` it runs with grad
    mode on, so the formulas must be bound to a kernel set whose ops are autograd Functions
    themselves (``triton_kernel_set``), as the registered ops are -- then double backward
    differentiates the backward op (the adjoint of a linear op) or reaches its
    ``no_double_backward`` formulas and raises their documented error, on every backend.
    """
    setup_context, backward = formulas
    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })


def triton_kernel_set(defs: list[OpDef], triton_module) -> SimpleNamespace:
    """The Triton launchers of a family as the autograd formulas see ``k``: every op with formulas
    an autograd Function whose formulas are bound to this same set (the backward ops included,
    so the formulas' calls are differentiable in turn, like those of torch.ops.fastsmall); ops
    without formulas (the in-place ops, never called from a formula) the plain launchers."""
    k = SimpleNamespace()
    for d in defs:
        launcher = getattr(triton_module, d.name)
        if d.formulas is not None:
            launcher = autograd_function(f"_Triton_{d.name}", launcher, d.formulas(k)).apply
        setattr(k, d.name, launcher)
    return k


def no_double_backward(op: str, why: str = "for higher-order gradients"):
    """Formulas of a backward op without a derivative of its own: double backward is a clear error."""
    def formulas(k):
        def setup_context(ctx, inputs, output):
            pass

        def backward(ctx, *grads):  # one gradient per output of the backward op
            raise NotImplementedError(f"double backward through fastsmall.ops.{op} is not implemented; "
                                      f"use backend='reference' {why}")

        return setup_context, backward

    return formulas


_impl_lib = None  # holds the ADInplaceOrView kernels of the in-place ops


def has_cpp_autograd(name: str) -> bool:
    """Whether the extension registers op ``name``'s autograd kernel in C++ (csrc/autograd.cpp: the
    ops called at small batches, where the Python layer of register_autograd costs more than the
    kernel); the other ops get their formulas registered from Python."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastsmall::{name}", "Autograd")


def _register(d: OpDef, triton_module) -> None:
    global _impl_lib
    qualname = f"fastsmall::{d.name}"
    op = getattr(torch.ops.fastsmall, d.name)

    def fake(*args):
        d.check(*args)
        return d.outputs(*args) if d.outputs is not None else None

    torch.library.register_fake(qualname)(fake)
    if d.formulas is not None and not has_cpp_autograd(d.name):
        setup_context, backward = d.formulas(torch.ops.fastsmall)
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    if d.mutates:
        if _impl_lib is None:
            _impl_lib = torch.library.Library("fastsmall", "IMPL")
        _impl_lib.impl(d.name, _ad_inplace_or_view_kernel(op.default), "ADInplaceOrView", with_keyset=True)
    if triton_module is not None:
        torch.library.register_kernel(qualname, "cuda", _checked(getattr(triton_module, d.name), d.check))
    if d.out_names:
        def fake_out(*args, **outs):  # the overload returns nothing (see csrc/fastsmall.cpp)
            check_outs(d, args, outs)

        torch.library.register_fake(f"{qualname}.out")(fake_out)
        if triton_module is not None:  # the Triton launcher's output copied in: one extra pass on CUDA
            write = _writing_into(_checked(getattr(triton_module, d.name), d.check), d)

            def triton_out(*args, **outs):
                write(*args, **outs)

            torch.library.register_kernel(f"{qualname}.out", "cuda", triton_out)


# ---- .out overloads -------------------------------------------------------------------------------

def check_outs(d: OpDef, args: tuple, outs: dict) -> None:
    """The arguments of ``d``'s ``.out`` overload: the op's, then each output like the op's own
    (``d.outputs``: shape, dtype, device) and contiguous."""
    d.check(*args)
    if set(outs) != set(d.out_names):
        raise TypeError(f"{d.name}(..., out=...) takes the outputs {', '.join(d.out_names)}, got {', '.join(outs)}")
    expected = d.outputs(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    ref = next(a for a in args if isinstance(a, torch.Tensor))
    for name, want in zip(d.out_names, expected):
        check_out(outs[name], name, want, ref, "the input")


def _arg_names(d: OpDef) -> tuple:
    return tuple(inspect.signature(d.check).parameters)


def _the_outs(d: OpDef, outs: dict):
    """What a public op with ``out=`` returns: the output tensor, or the tuple of them."""
    return outs[d.out_names[0]] if len(d.out_names) == 1 else tuple(outs[n] for n in d.out_names)


def _writing_into(fn, d: OpDef):
    """A ``.out`` overload from the functional ``fn``: computes, then copies into the outputs (returned)."""
    names = _arg_names(d)

    def call(*args, **outs):
        check_outs(d, args, outs)
        check_out_memory(outs, dict(zip(names, args)))
        got = fn(*args)
        got = got if isinstance(got, tuple) else (got,)
        for name, value in zip(d.out_names, got):
            outs[name].copy_(value)
        return _the_outs(d, outs)

    return call


def _refusing_grad(fn, d: OpDef, arg_names: tuple):
    """What the C++ Autograd kernels of the ``.out`` overloads do, for the routes without them: out=
    is bulk use without autograd (as aten's out= functions), and the outputs' versions move."""
    def call(*args, **outs):
        if torch.is_grad_enabled():
            for name, t in list(zip(arg_names, args)) + list(outs.items()):
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    raise RuntimeError(f"fastsmall.ops.{d.name}: out= is for bulk use without autograd, but {name} "
                                       "requires grad; call it without out= or under torch.no_grad()")
        with torch.no_grad():
            result = fn(*args, **outs)
        torch.autograd.graph.increment_version(list(outs.values()))
        return result

    return call


class Family:
    """An op family: registers its ops on torch.ops.fastsmall and routes calls to them."""

    def __init__(self, defs: list[OpDef], triton_module=None):
        self.defs = {d.name: d for d in defs}
        if ext.C is not None:
            for d in defs:
                _register(d, triton_module)
        triton_ops = triton_kernel_set(defs, triton_module) if triton_module is not None else None
        self._routes = {d.name: self._routes_of(d, triton_ops) for d in defs if d.reference is not None}
        self._out_routes = {d.name: self._out_routes_of(d) for d in defs if d.out_names}

    def _out_routes_of(self, d: OpDef) -> dict:
        """The ``.out`` overload on every route: the registered one (C++ kernel writing in place, its
        Autograd kernel refusing gradients); elsewhere the functional route's result copied in."""
        arg_names = _arg_names(d)
        routes = {label: _refusing_grad(_writing_into(fn, d), d, arg_names)
                  for label, fn in self._routes[d.name].items() if label != OPS}
        if OPS in self._routes[d.name]:
            op = getattr(torch.ops.fastsmall, d.name).out

            def diagnose(*args, **outs):
                check_outs(d, args, outs)
                check_out_memory(outs, dict(zip(arg_names, args)))

            registered = _diagnosed(op, diagnose)

            def call(*args, **outs):
                registered(*args, **outs)
                return _the_outs(d, outs)

            routes[OPS] = call
        return routes

    def route_out(self, name: str, backend: str | None, t: torch.Tensor, tensor_name: str):
        """Like ``route``, for the op's ``.out`` overload: a callable ``(*op_args, **outputs)`` returning the
        output (or the tuple of outputs) it wrote."""
        return self._out_routes[name][select(backend, t, tensor_name)]

    @staticmethod
    def _routes_of(d: OpDef, triton_ops) -> dict:
        routes = {REFERENCE: _checked(d.reference, d.check)}
        if ext.C is not None:
            # the overload itself: the packet's __call__ would resolve it again on every call
            routes[OPS] = _diagnosed(getattr(torch.ops.fastsmall, d.name).default, d.check)
        if triton_ops is not None:
            direct = getattr(triton_ops, d.name)
            if d.mutates:
                direct = _bumping_versions(direct)
            routes[TRITON_DIRECT] = _checked(direct, d.check)
        return routes

    def route(self, name: str, backend: str | None, t: torch.Tensor, tensor_name: str):
        """The callable (with the op's signature) that serves this call of op ``name``."""
        return self._routes[name][select(backend, t, tensor_name)]
