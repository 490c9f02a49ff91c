"""The KCS op family (kcs_forward, bone_decompose, kcs_inverse): a table of cases run on every
backend against the reference (values and gradients), float64 gradcheck, the registered ops
(opcheck, fakes, torch.compile) and bad input. Real Human3.6M frames: test_kcs_real_data.py."""
import random
from typing import NamedTuple

import pytest
import torch

import fastsmall as fs
from conftest import available_backends, device_for, op_registration_tests, random_parents
from fastsmall import _extension as ext

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if "reference" not in str(b)]
needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")
OPS = ["kcs_forward", "bone_decompose", "kcs_inverse"]
SK = fs.Skeleton.h36m16()
P = list(SK.parents)
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-11, rtol=1e-11),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


# ---- the table of cases ------------------------------------------------------------------------

class Case(NamedTuple):
    op: str
    parents: tuple
    batch: tuple
    D: int = 3
    dtype: torch.dtype = torch.float32
    with_root: bool = True
    layout: str = "contiguous"  # or transposed / strided / last-dim-slice / expanded

    @property
    def id(self):
        J = len(self.parents)
        return f"{self.op}-J{J}-b{'x'.join(map(str, self.batch)) or 'none'}-D{self.D}-{str(self.dtype)[6:]}-" \
               f"{'root' if self.with_root else 'noroot'}-{self.layout}"


def _cases():
    out = []
    for op in OPS:  # the h36m16 grid: dtypes, point dims, batch shapes (empty ones included)
        for dtype in (torch.float32, torch.float64):
            for D in (2, 3):
                for batch in [(), (5,), (3, 4), (0,), (2, 0, 3)]:
                    out.append(Case(op, SK.parents, batch, D, dtype))
    rng = random.Random(0)
    for op in OPS:  # random trees, parents not in topological order
        for J in (2, 3, 9, 24, 40):
            out.append(Case(op, tuple(random_parents(J, rng)), rng.choice([(), (7,), (2, 5)]), rng.choice([2, 3]),
                            rng.choice([torch.float32, torch.float64]), rng.random() < 0.5))
    for op in OPS:  # non-contiguous inputs (and root)
        for layout in ("transposed", "strided", "last-dim-slice", "expanded"):
            out.append(Case(op, SK.parents, (), 3, torch.float64, True, layout))
    return out


CASES = _cases()
LOW_PRECISION = [Case(op, SK.parents, (33,), 3, dtype) for op in OPS for dtype in (torch.float16, torch.bfloat16)]


def make_inputs(case: Case, device):
    """Fresh random inputs of the case (poses for the forward ops, bones and root for the inverse)."""
    rows = len(case.parents) - 1 if case.op == "kcs_inverse" else len(case.parents)
    kw = dict(dtype=case.dtype, device=device)
    if case.layout == "contiguous":
        t = torch.randn(*case.batch, rows, case.D, **kw)
    elif case.layout == "transposed":
        t = torch.randn(rows, 6, 3, **kw).transpose(0, 1)
    elif case.layout == "strided":
        t = torch.randn(12, rows, 3, **kw)[::3]
    elif case.layout == "last-dim-slice":
        t = torch.randn(4, rows, 5, **kw)[..., 1:4]
    else:
        t = torch.randn(1, rows, 3, **kw).expand(5, rows, 3)
    assert t.is_contiguous() == (case.layout == "contiguous") or t.numel() == 0
    inputs = [t]
    if case.op == "kcs_inverse" and case.with_root:
        root = torch.randn(*t.shape[:-2], 1, t.shape[-1], **kw)
        inputs.append(root if case.layout == "contiguous"
                      else torch.randn(t.shape[0], t.shape[-1], 1, **kw).transpose(1, 2))
    return inputs


def call(op, sk, inputs, backend, eps=0.0):
    """Run `op` and return its outputs as a tuple."""
    if op == "kcs_forward":
        return (fs.ops.kcs_forward(inputs[0], sk, backend=backend),)
    if op == "bone_decompose":
        return fs.ops.bone_decompose(inputs[0], sk, eps, backend=backend)
    root = inputs[1] if len(inputs) > 1 else None
    return (fs.ops.kcs_inverse(inputs[0], sk, root, backend=backend),)


def outputs_and_grads(op, sk, inputs, backend, cotangents=None, eps=0.0):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs = call(op, sk, leaves, backend, eps)
    if cotangents is None:
        cotangents = [torch.randn_like(o) for o in outs]
    if sum(o.numel() for o in outs) == 0:
        grads = [torch.zeros_like(t) for t in leaves]
    else:
        grads = torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return [o.detach() for o in outs], grads, cotangents


def assert_matches_reference(op, sk, inputs, backend, eps=0.0):
    tol = TOL[inputs[0].dtype]
    outs, grads, cot = outputs_and_grads(op, sk, inputs, backend, eps=eps)
    ref_outs, ref_grads, _ = outputs_and_grads(op, sk, [t.cpu() for t in inputs], "reference",
                                               [c.cpu() for c in cot], eps=eps)
    for o, r in zip(outs, ref_outs):
        assert o.shape == r.shape and o.dtype == r.dtype and o.device == inputs[0].device
        torch.testing.assert_close(o.cpu(), r, **tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu(), r, **tol)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_matches_reference(backend, device, case):
    assert_matches_reference(case.op, fs.Skeleton(case.parents), make_inputs(case, device), backend)


@pytest.mark.parametrize("case", LOW_PRECISION, ids=[c.id for c in LOW_PRECISION])
@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
def test_low_precision_computed_in_float32(backend, device, case):
    # the reference computes in float32 and rounds once, as the kernels must
    assert_matches_reference(case.op, SK, make_inputs(case, device), backend)


# ---- gradients: float64 gradcheck per op and backend ---------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op, eps, with_root", [
    ("kcs_forward", 0.0, False), ("bone_decompose", 0.0, False), ("bone_decompose", 0.3, False),
    ("kcs_inverse", 0.0, False), ("kcs_inverse", 0.0, True)])
def test_gradcheck(backend, device, op, eps, with_root, rng):
    # the interpreter is slow: Triton gets a smaller tree and gradcheck's fast mode
    interpreted = backend == "triton" and device == "cpu"
    sk = fs.Skeleton(random_parents(6, rng)) if interpreted else SK
    case = Case(op, sk.parents, (2,), 3, torch.float64, with_root)
    inputs = [t.requires_grad_() for t in make_inputs(case, device)]
    if op == "bone_decompose" and eps > 0:
        # some bones shorter than eps, so the clamped branch is exercised too
        inputs[0].data[..., 1, :] = inputs[0].data[..., sk.parents[1], :] + 0.05 * torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: call(op, sk, a, backend, eps), inputs, fast_mode=interpreted)


@needs_cpp
def test_double_backward_of_linear_ops():
    x = torch.randn(3, 16, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 15, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: fs.ops.kcs_forward(x, SK, backend="cpp"), (x,))
    assert torch.autograd.gradgradcheck(lambda b, r: fs.ops.kcs_inverse(b, SK, r, backend="cpp"), (b, r))
    unit, _ = fs.ops.bone_decompose(x, SK, backend="cpp")
    (g,) = torch.autograd.grad(unit.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward through fastsmall.ops.bone_decompose"):
        g.sum().backward()


# ---- conventions and edge cases -----------------------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
def test_inverse_of_forward_is_root_relative_pose(backend, device):
    x = torch.randn(8, 3, 16, 3, dtype=torch.float64, device=device)
    bones = fs.ops.kcs_forward(x, SK, backend=backend)
    torch.testing.assert_close(fs.ops.kcs_inverse(bones, SK, backend=backend), x - x[..., :1, :])
    unit, length = fs.ops.bone_decompose(x, SK, backend=backend)
    torch.testing.assert_close(fs.ops.kcs_inverse(unit * length, SK, root=x[..., :1, :], backend=backend), x)
    # a root of shape [1, D] broadcasts over the batch
    x2 = fs.ops.kcs_inverse(bones, SK, root=x[0, 0, :1, :], backend=backend)
    torch.testing.assert_close(x2, x - x[..., :1, :] + x[0, 0, :1, :])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("used", ["unit", "length"])
def test_bone_decompose_with_one_output_used(backend, device, used):
    x = torch.randn(4, 16, 3, dtype=torch.float64, device=device)
    grads = []
    for be in (backend, "reference"):
        xx = x.detach().cpu().to(device if be == backend else "cpu").requires_grad_()
        unit, length = fs.ops.bone_decompose(xx, SK, backend=be)
        out = unit if used == "unit" else length
        weights = torch.arange(out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape).sin()
        (g,) = torch.autograd.grad((out * weights).sum(), xx)
        grads.append(g.cpu())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # the interpreter's 0/0, wanted here
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_zero_length_bone_eps_convention(backend, device):
    x = torch.randn(2, 16, 3, dtype=torch.float64, device=device)
    x[:, 1] = x[:, 0]  # bone 0 (Hip -> RHip) has zero length
    # eps = 0: PoseAug's b / ||b||, a zero-length bone gives NaN (0 / 0), as there
    unit, length = fs.ops.bone_decompose(x, SK, backend=backend)
    assert torch.isnan(unit[:, 0]).all() and (length[:, 0] == 0).all()
    assert torch.isfinite(unit[:, 1:]).all()
    # eps > 0: b / max(||b||, eps), finite values and gradients
    xx = x.clone().requires_grad_()
    unit, length = fs.ops.bone_decompose(xx, SK, eps=1e-6, backend=backend)
    assert (unit[:, 0] == 0).all()
    (unit.sum() + length.sum()).backward()
    assert torch.isfinite(xx.grad).all()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_single_joint_skeleton(backend, device):
    sk = fs.Skeleton([-1])
    x = torch.randn(4, 1, 3, device=device)
    assert fs.ops.kcs_forward(x, sk, backend=backend).shape == (4, 0, 3)
    unit, length = fs.ops.bone_decompose(x, sk, backend=backend)
    assert unit.shape == (4, 0, 3) and length.shape == (4, 0, 1)
    bones = torch.randn(4, 0, 3, device=device)
    torch.testing.assert_close(fs.ops.kcs_inverse(bones, sk, root=x, backend=backend), x)
    assert (fs.ops.kcs_inverse(bones, sk, backend=backend) == 0).all()


def test_device_for_puts_the_cpu_backends_on_cpu():
    assert device_for("cpp") == device_for("reference") == torch.device("cpu")


# ---- the registered ops: opcheck, fakes, torch.compile ----------------------------------------------

def _samples():
    """(op name, args) over varied shapes, dtypes, optional arguments and layouts."""
    def poses(*batch, D=3, dtype=torch.float32, rows=16):
        return torch.randn(*batch, rows, D, dtype=dtype)

    out = []
    for x in [poses(5), poses(2, 3, D=2, dtype=torch.float64), poses(0), poses(7, D=2)]:
        out.append(("kcs_forward", (x.requires_grad_(), P)))
        out.append(("bone_decompose", (x.detach().requires_grad_(), P, 0.0)))
        out.append(("bone_decompose", (x.detach().requires_grad_(), P, 0.25)))
    for b in [poses(5, rows=15), poses(2, 3, D=2, dtype=torch.float64, rows=15), poses(0, rows=15)]:
        root = torch.randn(*b.shape[:-2], 1, b.shape[-1], dtype=b.dtype)
        out.append(("kcs_inverse", (b.requires_grad_(), P, None)))
        out.append(("kcs_inverse", (b.detach().requires_grad_(), P, root.requires_grad_())))
        out.append(("kcs_forward_backward", (b.detach().requires_grad_(), P)))
    for x in [poses(5), poses(3, 2, D=2, dtype=torch.float64)]:
        gu = torch.randn(*x.shape[:-2], 15, x.shape[-1], dtype=x.dtype)
        gl = torch.randn(*x.shape[:-2], 15, 1, dtype=x.dtype)
        out.append(("bone_decompose_backward", (gu, gl, x, P, 0.0)))
        out.append(("bone_decompose_backward", (gu, None, x, P, 0.1)))
        out.append(("bone_decompose_backward", (None, gl, x, P, 0.0)))
        out.append(("kcs_inverse_backward", (x.detach().requires_grad_(), P)))
    x = torch.randn(16, 6, 3).transpose(0, 1)  # non-contiguous
    out.append(("kcs_forward", (x, P)))
    out.append(("kcs_inverse_backward", (x, P)))
    return out


test_opcheck, test_fake_and_real_outputs_have_same_strides = op_registration_tests(_samples())


def _pipeline(x, root):
    bones = fs.ops.kcs_forward(x, SK)
    unit, length = fs.ops.bone_decompose(x, SK, eps=1e-6)
    y = fs.ops.kcs_inverse(unit * length * 1.1 + 0.1 * bones, SK, root=root)
    return (y.sin() * y).sum() + length.sum()


@needs_cpp
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_aot_eager(dynamic):
    x = torch.randn(6, 16, 3, requires_grad=True)
    root = torch.randn(6, 1, 3, requires_grad=True)
    eager = torch.autograd.grad(_pipeline(x, root), (x, root))
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for batch in (6, 9):  # a second shape: recompiles (static) or reuses (dynamic)
        xb, rb = torch.randn(batch, 16, 3, requires_grad=True), torch.randn(batch, 1, 3, requires_grad=True)
        got = torch.autograd.grad(compiled(xb, rb), (xb, rb))
        want = torch.autograd.grad(_pipeline(xb, rb), (xb, rb))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    got = torch.autograd.grad(compiled(x, root), (x, root))
    for g, w in zip(got, eager):
        torch.testing.assert_close(g, w)


@needs_cpp
def test_compile_fullgraph_inductor():
    x = torch.randn(5, 16, 3, requires_grad=True)
    root = torch.randn(5, 1, 3, requires_grad=True)
    torch._dynamo.reset()
    loss = torch.compile(_pipeline, fullgraph=True, backend="inductor")(x, root)
    got = torch.autograd.grad(loss, (x, root))
    want = torch.autograd.grad(_pipeline(x, root), (x, root))
    torch.testing.assert_close(loss, _pipeline(x, root))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_compiled_reference_is_traceable():
    """The benchmarks' torch.compile(reference) baseline compiles without graph breaks."""
    x = torch.randn(4, 16, 3)
    torch._dynamo.reset()
    for fn in (fs.reference.kcs_forward, lambda x, sk: fs.reference.bone_decompose(x, sk)[0],
               lambda x, sk: fs.reference.kcs_inverse(x[..., 1:, :], sk)):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x, SK), fn(x, SK))


# ---- bad input: a clear error naming the argument, through the wrappers and torch.ops -------------

WRAPPER_ERRORS = [
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 4), SK, backend=b), ValueError, "x must have a last dimension D of 2 or 3, got 4"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 17, 3), SK, backend=b), ValueError, "x has 17 joints .* the skeleton has 16"),
    (lambda b: fs.ops.kcs_forward(torch.randn(16), SK, backend=b), ValueError, r"x must have shape \[\.\.\., 16, D\]"),
    (lambda b: fs.ops.kcs_forward(torch.randint(0, 5, (4, 16, 3)), SK, backend=b), TypeError, "x must be a floating-point tensor"),
    (lambda b: fs.ops.kcs_forward([[0.0] * 3] * 16, SK, backend=b), TypeError, "x must be a torch.Tensor"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), "h36m", backend=b), TypeError, "skeleton must be a fastsmall.Skeleton"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), [-1, 0, 9], backend=b), ValueError, r"parents\[2\] = 9 is out of range"),
    (lambda b: fs.ops.bone_decompose(torch.randn(4, 16, 3), SK, eps=-1.0, backend=b), ValueError, "eps must be a float >= 0"),
    (lambda b: fs.ops.bone_decompose(torch.randn(4, 16, 3), SK, eps=True, backend=b), ValueError, "eps must be a float >= 0"),
    (lambda b: fs.ops.bone_decompose(torch.randn(4, 16, 3, dtype=torch.complex64), SK, backend=b), TypeError, "x must be a floating-point"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 16, 3), SK, backend=b), ValueError, "bones has 16 bones .* the skeleton has 15"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(4, 1, 2), backend=b), ValueError, r"root must have shape \[\.\.\., 1, D\]"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(3, 1, 3), backend=b), ValueError, r"root must have shape \[\.\.\., 1, D\]"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(4, 1, 3).double(), backend=b), TypeError, "root has dtype torch.float64 but bones has dtype torch.float32"),
    (lambda b: fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=[0.0, 0.0, 0.0], backend=b), TypeError, "root must be a torch.Tensor"),
    (lambda b: fs.ops.kcs_forward(torch.randn(4, 16, 3), SK, backend=b + "x"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("call, error, message", WRAPPER_ERRORS)
def test_wrapper_errors(backend, device, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_cpp_backend_rejects_other_devices():
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors, but x is on meta"):
        fs.ops.kcs_forward(torch.randn(2, 16, 3, device="meta"), SK, backend="cpp")


def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="root is on meta but bones is on cpu"):
        fs.ops.kcs_inverse(torch.randn(4, 15, 3), SK, root=torch.randn(4, 1, 3, device="meta"))


@needs_cpp
@pytest.mark.parametrize("call, message", [
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 16, 5), P), "x must have a last dimension D of 2 or 3"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 15, 3), P), "x has 15 joints"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.ones(4, 16, 3, dtype=torch.int32), P), "x must be a floating-point tensor"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 3, 3), [-1, -1, 0]), "exactly one root"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 3, 3), [-1, 5, 0]), r"parents\[1\] = 5 is out of range"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 4, 3), [-1, 2, 3, 1]), "cycle"),
    (lambda: torch.ops.fastsmall.kcs_forward(torch.randn(4, 0, 3), []), "at least one joint"),
    (lambda: torch.ops.fastsmall.bone_decompose(torch.randn(4, 16, 3), P, -0.5), "eps must be >= 0"),
    (lambda: torch.ops.fastsmall.kcs_inverse(torch.randn(4, 15, 3), P, torch.randn(4, 2, 3)), "root must have shape"),
    (lambda: torch.ops.fastsmall.kcs_inverse(torch.randn(4, 15, 3), P, torch.randn(4, 1, 3).double()), "root has dtype"),
    (lambda: torch.ops.fastsmall.bone_decompose_backward(torch.randn(4, 14, 3), None, torch.randn(4, 16, 3), P, 0.0), "grad_unit must have shape"),
    (lambda: torch.ops.fastsmall.kcs_inverse_backward(torch.randn(4, 16, 1), P), "grad_x must have a last dimension"),
])
def test_cpp_kernel_errors(call, message):
    """Callers of torch.ops.fastsmall.* that skip the wrappers still get errors, never a crash."""
    with pytest.raises(RuntimeError, match=message):
        call()


@needs_cpp
def test_fakes_check_the_arguments():
    """Meta tensors (and torch.compile) reach the fakes, which run the ops' Python checks."""
    with pytest.raises(ValueError, match="x has 15 joints"):
        torch.ops.fastsmall.kcs_forward(torch.randn(4, 15, 3, device="meta"), P)
    with pytest.raises(ValueError, match=r"grad_length must have shape \(4, 15, 1\)"):
        torch.ops.fastsmall.bone_decompose_backward(None, torch.randn(4, 15, 3, device="meta"),
                                                    torch.randn(4, 16, 3, device="meta"), P, 0.0)


# ---- the KCS C++ pose tiles: exact bits on every instruction set ----------------------------------
# bone_decompose (and, below it, the linear kernels: kcs_forward, kcs_inverse and their adjoints) runs poses in transposed tiles of 32 with the arithmetic vectorised across poses and
# compiled per instruction set. Each lane must compute what a per-pose loop computes in float32 (same
# operations, same order, true divisions and square roots, no fused multiply-add): the expected bits are
# computed here with separate torch float32 operations in that order. Batches cross tile edges; the
# three gradient cases (unit only, length only, both) and eps = 0 / eps > 0 are covered.

def _exact_bone_decompose(x, parents, eps, gu, gl):
    tree = fs.Skeleton(parents).tree
    b = x[:, list(tree.bone_parent)] - x[:, list(tree.bone_child)]
    D = x.shape[-1]
    sq = b[..., 0] * b[..., 0] + b[..., 1] * b[..., 1]
    dot = None
    if gu is not None:
        dot = b[..., 0] * gu[..., 0] + b[..., 1] * gu[..., 1]
    if D == 3:
        sq = sq + b[..., 2] * b[..., 2]
        if gu is not None:
            dot = dot + b[..., 2] * gu[..., 2]
    # correctly rounded: a float64 square root rounded once to float32 (torch's float32 sqrt on CPU is
    # not always correctly rounded; the kernel's sqrtps / std::sqrt is)
    length = torch.sqrt(sq.double()).to(sq.dtype)
    den = torch.where(length < eps, torch.full_like(length, eps), length)
    unit = b / den[..., None]
    coef = torch.zeros_like(length)
    g = torch.zeros_like(b)
    if gu is not None:
        scale = 1.0 / den
        radial = dot / (den * den * length)
        coef = coef - torch.where(length >= eps, radial, torch.zeros_like(radial))
        g = gu * scale[..., None]
    if gl is not None:
        along = gl[..., 0] / length
        coef = coef + torch.where(length == 0, torch.zeros_like(along), along)
    g = g + coef[..., None] * b
    return unit, length[..., None], _exact_kcs_adjoint(g, tree, x)


def _exact_kcs_adjoint(g, tree, x):
    """kcs_forward's adjoint of bone gradients ``g`` as the kernels' gather sums it (csrc/cpu/kcs_cpu.cpp
    kcs_adjoint_tile): minus the bone ending at j, then the bones leaving j in csrc/tree.h's order."""
    gx = torch.zeros_like(x)
    for j in range(tree.num_joints):
        s = -g[:, tree.joint_bone[j]] if tree.joint_bone[j] >= 0 else torch.zeros_like(x[:, j])
        for k in tree.child_bones[j]:
            s = s + g[:, k]
        gx[:, j] = s
    return gx


def _exact_kcs_linear(x, bones, root, grad_bones, grad_x, parents):
    """kcs_forward, its adjoint, kcs_inverse and its adjoint as the per-pose loops compute them, in
    float32 (the compute type of float16 too), summing in the kernels' order."""
    tree = fs.Skeleton(parents).tree
    dtype = x.dtype
    x, bones, root, grad_bones, grad_x = (t.float() for t in (x, bones, root, grad_bones, grad_x))
    fwd = x[:, list(tree.bone_parent)] - x[:, list(tree.bone_child)]
    adj = _exact_kcs_adjoint(grad_bones, tree, x)
    inv = torch.zeros_like(x)
    inv[:, tree.root] = root[:, 0]
    for k in tree.topo_bones:
        inv[:, tree.bone_child[k]] = inv[:, tree.bone_parent[k]] - bones[:, k]
    acc, inv_adj = grad_x.clone(), torch.zeros_like(bones)
    for k in reversed(tree.topo_bones):
        inv_adj[:, k] = -acc[:, tree.bone_child[k]]
        acc[:, tree.bone_parent[k]] = acc[:, tree.bone_parent[k]] + acc[:, tree.bone_child[k]]
    return tuple(t.to(dtype) for t in (fwd, adj, inv, inv_adj, acc[:, tree.root:tree.root + 1]))


_BONE_TILE_SCRIPT = r"""
import sys, torch
sys.path.insert(0, "tests")
import fastsmall as fs
from test_kcs import _exact_bone_decompose, _exact_kcs_linear
torch.manual_seed(0)
def same(a, b):  # bit for bit, NaN == NaN (a zero-length bone's unit vector at eps = 0 is 0 / 0)
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())
parents = fs.Skeleton.h36m16().parents
for B in (1, 31, 32, 33, 100):
    for D in (2, 3):
        for eps in (0.0, 0.5):
            x = torch.randn(B, 16, D)
            x[0, 3] = x[0, 2]  # a zero-length bone
            gu, gl = torch.randn(B, 15, D), torch.randn(B, 15, 1)
            unit, length = torch.ops.fastsmall.bone_decompose(x, parents, eps)
            want_u, want_l, _ = _exact_bone_decompose(x, parents, eps, None, None)
            assert same(unit, want_u) and same(length, want_l), (B, D, eps)
            for a, b in ((gu, gl), (gu, None), (None, gl)):
                got = torch.ops.fastsmall.bone_decompose_backward(a, b, x, parents, eps)
                want = _exact_bone_decompose(x, parents, eps, a, b)[2]
                assert same(got, want), (B, D, eps, a is None, b is None, (got - want).abs().max())
F = torch.ops.fastsmall
for B in (1, 31, 32, 33, 100):
    for D in (2, 3):
        for dtype in (torch.float32, torch.float16):
            x, gx = torch.randn(B, 16, D).to(dtype), torch.randn(B, 16, D).to(dtype)
            bones, gb = torch.randn(B, 15, D).to(dtype), torch.randn(B, 15, D).to(dtype)
            root = torch.randn(B, 1, D).to(dtype)
            want = _exact_kcs_linear(x, bones, root, gb, gx, parents)
            got = (F.kcs_forward(x, parents), F.kcs_forward_backward(gb, parents), F.kcs_inverse(bones, parents, root),
                   *F.kcs_inverse_backward(gx, parents))
            for name, a, b in zip(("forward", "forward_backward", "inverse", "inverse_backward", "grad_root"),
                                  got, want):
                assert same(a, b), (name, B, D, dtype, (a.float() - b.float()).abs().max())
            no_root = _exact_kcs_linear(x, bones, torch.zeros_like(root), gb, gx, parents)[2]
            assert same(F.kcs_inverse(bones, parents, None), no_root), ("inverse without root", B, D, dtype)
print("ok")
"""


@needs_cpp
@pytest.mark.parametrize("simd_bytes", [16, 32, 64])
def test_cpp_kcs_tiles_give_the_per_pose_bits_on_every_instruction_set(simd_bytes):
    """FASTSMALL_SIMD_BYTES caps the instruction set (16: SSE2, 32: AVX2, 64: AVX-512 where the CPU
    has it, else the widest it has)."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, FASTSMALL_SIMD_BYTES=str(simd_bytes))
    out = subprocess.run([sys.executable, "-c", _BONE_TILE_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
