"""How a method's training step runs fast: ``--precision``, ``--channels-last`` and ``--compile``,
shared by every method.

* ``--precision bf16`` runs matmuls and convolutions under ``torch.autocast(bfloat16)`` where the
  hardware has bf16 matrix units (CPU: AMX-BF16 or AVX512-BF16; CUDA: any GPU that supports
  bf16). Parameters, optimizer state, BatchNorm running statistics and the losses stay float32
  (the step casts logits to float32 before any loss; fastsmall's ops accumulate in float32).
  Without such units it says so once and runs float32: emulated bf16 is slower than float32.
* ``--channels-last`` keeps 4-d activations and conv weights NHWC, the layout oneDNN's CPU
  convolutions run natively (the default NCHW makes them reorder on every call).
* ``--compile`` compiles the step's forward and losses as one graph (``fullgraph=True``, static
  shapes; AOTAutograd compiles the backward with it), fastsmall's custom ops inside the graph.
  Random ops in the graph (noise, dropout, the seed of a counter-based mask) draw from the global
  generator as eager does (inductor's ``fallback_random``), so a compiled fp32 step follows eager's
  random stream and matches eager to float tolerance.
* ``optimizer_step(opt)`` is ``opt.step``; under ``--compile`` SGD's update is compiled
  (:class:`CompiledSGDStep`: generated kernels instead of one foreach call per state tensor). The
  learning rate becomes a tensor that :func:`set_lr` fills in place, so a schedule that moves it
  every epoch or step never recompiles (a float lr is a guard: a new value, a new graph).
* Optimizers: ``adam(params, lr)`` is ``foreach=True`` (bitwise the per-tensor loop's numbers,
  tested), and ``fused=True`` (one pass over each parameter; equal to the loop to float
  tolerance, not bitwise) under ``--compile``, where fp32 is already only float-tolerance equal.

``StepSpeed`` turns a config's three fields into what the training loop calls: ``autocast()``,
``prepare(module)``, ``inputs(x)``, ``compile(fn)``, ``optimizer_step(opt)`` and ``adam(params, lr)``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch
from torch.optim.sgd import sgd as functional_sgd

from .config import option

PRECISIONS = ("fp32", "bf16")


def precision_option():
    return option("fp32", "fp32, or bf16: matmuls and convolutions in bfloat16 where the hardware has bf16 matrix "
                          "units (parameters, optimizer state, BatchNorm statistics and losses stay float32)",
                  choices=list(PRECISIONS))


def add_precision_argument(parser) -> None:
    """An experiment runner's ``--precision``: the precision of every run it trains (its reproduce
    command names bf16; ``bench/bf16_parity.py`` pairs a documented experiment's fp32 and bf16 runs)."""
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="every run's --precision (bf16: matmuls and convolutions in bfloat16 where the hardware "
                             "has bf16 matrix units; bench/bf16_parity.py compares the two)")


def channels_last_option():
    return option(False, "NHWC activations and conv weights (the layout oneDNN's CPU convolutions run natively)")


def compile_option():
    return option(False, "torch.compile the step's forward and losses as one graph (fullgraph, static shapes)")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def matrix_units() -> dict:
    """What this machine has for low-precision matrix work, found at run time."""
    flags = cpu_flags()
    units = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_fp16": "avx512_fp16" in flags,
        "cuda": torch.cuda.is_available(),
        "cuda_bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }
    units["cpu_bf16"] = units["amx_bf16"] or units["avx512_bf16"]
    return units


#: FASTSMALL_BF16_EMULATE=1 runs --precision bf16 without bf16 matrix units: the same bf16
#: numerics (bf16 operands, float32 accumulation) at a speed below float32's. For checking on a
#: machine without the units what bf16 does to a method's results (bench/bf16_parity.py).
EMULATE_ENV = "FASTSMALL_BF16_EMULATE"


def bf16_emulated() -> bool:
    return os.environ.get(EMULATE_ENV, "0") == "1"


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    """(bf16 matrix units on ``device`` -- or emulation asked for with FASTSMALL_BF16_EMULATE=1, why not)."""
    if bf16_emulated() and device.type in ("cpu", "cuda"):
        return True, ""
    return bf16_units(device)


def bf16_units(device: torch.device) -> tuple[bool, str]:
    """(bf16 matrix units on ``device``, why not)."""
    units = matrix_units()
    if device.type == "cuda":
        return units["cuda_bf16"], "this GPU has no bf16 support"
    if device.type == "cpu":
        return units["cpu_bf16"], "this CPU has neither AMX-BF16 nor AVX512-BF16"
    return False, f"no bf16 path for {device.type}"


_warned: set[str] = set()


def _say_once(say, message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        say(message)


class StepSpeed:
    """The speed settings of one run (``precision``, ``channels_last``, ``compile`` of a config)."""

    backend = "inductor"  # torch.compile's backend

    def __init__(self, cfg, device: torch.device, say=print):
        self.device = torch.device(device)
        self.requested = getattr(cfg, "precision", "fp32")
        self.channels_last = bool(getattr(cfg, "channels_last", False))
        # fused BatchNorm -> ReLU in the models that have it (models.set_fused_bn_act): channels-last
        # maps only, never under --impl official (the baseline keeps the modules' own ops), and on CPU
        # only, where it was measured faster (bench/RESULTS.md); no GPU was available to measure the
        # Triton kernel against cuDNN's batch norm at these shapes
        self.fused_layers = (self.channels_last and getattr(cfg, "impl", "fused") == "fused"
                             and self.device.type == "cpu")
        self.compiled = bool(getattr(cfg, "compile", False))
        self.dtype = None  # the autocast dtype; None: float32
        if self.requested == "bf16":
            ok, why = bf16_supported(self.device)
            if not ok:
                _say_once(say, f"--precision bf16: {why}; running fp32 (emulated bf16 would be slower)")
            else:
                self.dtype = torch.bfloat16
                if not bf16_units(self.device)[0]:
                    _say_once(say, f"--precision bf16: emulated ({EMULATE_ENV}=1): bf16 numerics without bf16 "
                                   "matrix units, slower than fp32")

    @property
    def precision(self) -> str:
        """The precision that runs (``fp32`` where bf16 was asked for but has no units)."""
        return "bf16" if self.dtype is not None else "fp32"

    def autocast(self):
        """The context a forward runs in: bf16 autocast, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module in the run's memory format (in place, as ``Module.to``), its fused layers on
        where the run fuses them (``fused_layers``)."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return self.configure_layers(module)

    def configure_layers(self, module: torch.nn.Module) -> torch.nn.Module:
        """The run's switches on the model's layers that have them (models.py): NHWC maps under
        ``--channels-last``, fused BatchNorm -> ReLU where the run fuses (``fused_layers``)."""
        from ..models import set_channels_last_maps, set_fused_bn_act  # (models imports the ops)

        set_channels_last_maps(module, self.channels_last)
        return set_fused_bn_act(module, self.fused_layers)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the run's memory format (4-d image batches only)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def compile(self, fn, *, dynamic: bool = False):
        """``fn`` compiled as one graph (static shapes unless ``dynamic``), or ``fn`` itself without
        ``--compile``. Random ops in the graph run as eager's (``fallback_random``): same stream."""
        if not self.compiled:
            return fn
        if self.backend != "inductor":  # tests: "aot_eager" (same graphs, no code generation)
            return torch.compile(fn, fullgraph=True, dynamic=dynamic, backend=self.backend)
        return torch.compile(fn, fullgraph=True, dynamic=dynamic, options={"fallback_random": True})

    def optimizer_step(self, optimizer: torch.optim.Optimizer):
        """``optimizer.step``, or under ``--compile`` for SGD :class:`CompiledSGDStep` (the same
        update, compiled once per process for every optimizer). Every group's lr becomes a tensor
        on the run's device; move it with :func:`set_lr`."""
        if not self.compiled or type(optimizer) is not torch.optim.SGD:
            return optimizer.step  # (Adam: fused=True under --compile, already one pass)
        tensor_lr_(optimizer, self.device)
        return CompiledSGDStep(optimizer, backend=self.backend)

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam on ``params``: ``foreach=True`` (bitwise the loop), ``fused=True`` under ``--compile``
        where PyTorch has a fused kernel (CPU, CUDA; float tolerance of the loop)."""
        if self.compiled and self.device.type in ("cpu", "cuda"):
            return torch.optim.Adam(params, lr=lr, fused=True)
        return torch.optim.Adam(params, lr=lr, foreach=True)

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict) -> None:
        """``opt.load_state_dict(state)`` keeping this run's ``foreach`` / ``fused`` choice: a
        checkpoint carries the flags of the run that saved it, and ``--compile`` may differ on resume."""
        flags = [(g.get("foreach"), g.get("fused")) for g in opt.param_groups]
        lr_tensor = [torch.is_tensor(g["lr"]) for g in opt.param_groups]
        opt.load_state_dict(state)
        for group in opt.param_groups:  # this run's lr kind (a tensor under optimizer_step's compile)
            group["lr"] = float(group["lr"])
        if any(lr_tensor):
            tensor_lr_(opt, self.device)
        for group, (foreach, fused) in zip(opt.param_groups, flags):
            group["foreach"], group["fused"] = foreach, fused
            for p in group["params"]:  # fused Adam keeps `step` on the parameter's device, the loop on the CPU
                st = opt.state.get(p)
                if st and torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(device=p.device if fused else "cpu", dtype=torch.float32)

    def describe(self) -> dict:
        return {"precision": self.precision, "precision_requested": self.requested,
                "channels_last": self.channels_last, "compile": self.compiled}


def tensor_lr_(optimizer: torch.optim.Optimizer, device) -> None:
    """Every param group's lr as a 0-d tensor on ``device`` (in place; a compiled step reads it as
    an input instead of guarding on its value). float64 -- the Python float exactly -- except on MPS,
    which has none; the update casts it to the parameters' dtype as eager SGD does its float lr."""
    device = torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    for group in optimizer.param_groups:
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate: filled in place where it is a tensor
    (:meth:`StepSpeed.optimizer_step`), assigned where it is a float."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def require_zero_dampening(group: dict, who: str) -> None:
    """With momentum and ``dampening == 0`` SGD's first step sets ``buf = grad``, and a zero buffer
    gives ``0 * momentum + grad``, the same values: what lets a zeroed (or pre-made zero) buffer
    stand for a fresh optimizer. With dampening it would not."""
    if group.get("momentum", 0) != 0 and group.get("dampening", 0) != 0:
        raise ValueError(f"{who} needs dampening == 0 with momentum (a zero momentum buffer is then a fresh one)")


def restart_sgd_(optimizer: torch.optim.SGD) -> None:
    """Make ``optimizer`` a fresh SGD in place (a new generation's optimizer) without new objects:
    its momentum buffers zeroed (``require_zero_dampening``: the same values as a new SGD). In place,
    because the buffers may be views another object holds (``--seeds``: rows of the stacked momentum)."""
    for group in optimizer.param_groups:
        require_zero_dampening(group, "restart_sgd_")
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.zero_()


def _sgd_update(params, grads, momentum_buffers, lr, weight_decay: float, momentum: float, dampening: float,
                nesterov: bool, maximize: bool) -> None:
    """torch.optim.SGD's foreach update of one param group (its functional form), in place."""
    with torch.no_grad():  # as SGD.step
        functional_sgd(params, grads, momentum_buffers, foreach=True, weight_decay=weight_decay,
                       momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov, maximize=maximize)


_compiled_sgd_updates: dict = {}


class CompiledSGDStep:
    """``optimizer.step()`` of a ``torch.optim.SGD`` as one compiled update per param group.

    Why not ``torch.compile(optimizer.step)``: dynamo guards on the optimizer object's identity, so
    every new optimizer in a process (another run, a benchmark's next configuration) recompiles,
    and past the recompile limit (8) the step silently falls back to eager. This compiles the
    functional update once per process: tensors are inputs, guarded by shape and dtype only. The
    momentum buffers are created as zeros before the first step (``require_zero_dampening``), so
    there is no separate first-step graph; the optimizer's
    state and ``state_dict`` stay torch.optim.SGD's own (checkpoints unchanged)."""

    def __init__(self, optimizer: torch.optim.SGD, backend: str = "inductor"):
        self.optimizer = optimizer
        if backend not in _compiled_sgd_updates:
            options = {} if backend != "inductor" else {"options": {"fallback_random": True}}
            _compiled_sgd_updates[backend] = torch.compile(_sgd_update, fullgraph=True, backend=backend, **options)
        self.update = _compiled_sgd_updates[backend]

    def __call__(self) -> None:
        opt = self.optimizer
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            require_zero_dampening(group, "CompiledSGDStep")
            buffers = []
            for p in params:
                state = opt.state[p]
                if state.get("momentum_buffer") is None and group["momentum"] != 0:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state.get("momentum_buffer"))
            self.update(params, [p.grad for p in params], buffers, group["lr"], group["weight_decay"],
                        group["momentum"], group["dampening"], group["nesterov"], group["maximize"])


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: float32 where autocast made them bf16 / fp16, else as they are (a float64
    network keeps float64 losses)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
