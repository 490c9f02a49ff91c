"""Every backend of the KCS op family against the plain-PyTorch reference."""
import pytest
import torch

import fastsmall as fs
from conftest import DEVICE, available_backends, random_parents

BACKENDS = available_backends()
OPS = ["kcs_forward", "bone_decompose", "kcs_inverse"]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-11, rtol=1e-11),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


def device_for(backend):
    return torch.device("cpu") if backend in ("cpp", "reference") else DEVICE


def make_inputs(op, sk, batch, D, dtype, device, with_root=False):
    """Fresh random inputs of `op` (poses for the forward ops, bones for the inverse)."""
    rows = sk.num_bones if op == "kcs_inverse" else sk.num_joints
    inputs = [torch.randn(*batch, rows, D, dtype=dtype, device=device)]
    if op == "kcs_inverse" and with_root:
        inputs.append(torch.randn(*batch, 1, D, dtype=dtype, device=device))
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


def assert_matches_reference(op, sk, inputs, backend, eps=0.0, tol=None):
    tol = tol or TOL[inputs[0].dtype]
    outs, grads, cot = outputs_and_grads(op, sk, inputs, backend, eps=eps)
    ref_inputs = [t.cpu() for t in inputs]
    ref_outs, ref_grads, _ = outputs_and_grads(op, sk, ref_inputs, "reference", [c.cpu() for c in cot], eps=eps)
    for o, r in zip(outs, ref_outs):
        assert o.shape == r.shape and o.dtype == r.dtype and o.device == inputs[0].device
        torch.testing.assert_close(o.cpu(), r, **tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu(), r, **tol)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [2, 3])
@pytest.mark.parametrize("batch", [(), (5,), (3, 4), (0,), (2, 0, 3)])
def test_h36m16_matches_reference(backend, device, op, dtype, D, batch):
    sk = fs.Skeleton.h36m16()
    inputs = make_inputs(op, sk, batch, D, dtype, device, with_root=True)
    assert_matches_reference(op, sk, inputs, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("J", [2, 3, 9, 24, 40])
def test_random_trees_match_reference(backend, device, op, J, rng):
    sk = fs.Skeleton(random_parents(J, rng))
    D = rng.choice([2, 3])
    batch = rng.choice([(), (7,), (2, 5)])
    dtype = rng.choice([torch.float32, torch.float64])
    inputs = make_inputs(op, sk, batch, D, dtype, device, with_root=rng.random() < 0.5)
    assert_matches_reference(op, sk, inputs, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["transposed", "strided", "last-dim-slice", "expanded"])
def test_non_contiguous_inputs(backend, device, op, layout):
    sk = fs.Skeleton.h36m16()
    rows = sk.num_bones if op == "kcs_inverse" else sk.num_joints
    if layout == "transposed":
        t = torch.randn(rows, 6, 3, dtype=torch.float64, device=device).transpose(0, 1)
    elif layout == "strided":
        t = torch.randn(12, rows, 3, dtype=torch.float64, device=device)[::3]
    elif layout == "last-dim-slice":
        t = torch.randn(4, rows, 5, dtype=torch.float64, device=device)[..., 1:4]
    else:
        t = torch.randn(1, rows, 3, dtype=torch.float64, device=device).expand(5, rows, 3)
    assert not t.is_contiguous()
    inputs = [t]
    if op == "kcs_inverse":
        inputs.append(torch.randn(t.shape[0], 3, 1, dtype=torch.float64, device=device).transpose(1, 2))
    assert_matches_reference(op, sk, inputs, backend)


@pytest.mark.parametrize("backend, device", [b for b in BACKENDS if "reference" not in str(b)])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(backend, device, op, dtype):
    sk = fs.Skeleton.h36m16()
    inputs = make_inputs(op, sk, (33,), 3, dtype, device, with_root=True)
    outs = call(op, sk, inputs, backend)
    # the reference computes in float32 and rounds once, as the kernels must
    ref = call(op, sk, [t.cpu() for t in inputs], "reference")
    for o, r in zip(outs, ref):
        assert o.dtype == dtype
        torch.testing.assert_close(o.cpu(), r, **TOL[dtype])
    assert_matches_reference(op, sk, inputs, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_inverse_of_forward_is_root_relative_pose(backend, device):
    sk = fs.Skeleton.h36m16()
    x = torch.randn(8, 3, 16, 3, dtype=torch.float64, device=device)
    bones = fs.ops.kcs_forward(x, sk, backend=backend)
    x0 = fs.ops.kcs_inverse(bones, sk, backend=backend)
    torch.testing.assert_close(x0, x - x[..., :1, :])
    unit, length = fs.ops.bone_decompose(x, sk, backend=backend)
    x1 = fs.ops.kcs_inverse(unit * length, sk, root=x[..., :1, :], backend=backend)
    torch.testing.assert_close(x1, x)
    # a root of shape [1, D] broadcasts over the batch
    x2 = fs.ops.kcs_inverse(bones, sk, root=x[0, 0, :1, :], backend=backend)
    torch.testing.assert_close(x2, x - x[..., :1, :] + x[0, 0, :1, :])


# ---- gradients: float64 gradcheck per op and backend ---------------------------------

def _gradcheck_inputs(op, sk, device, with_root):
    inputs = make_inputs(op, sk, (2,), 3, torch.float64, device, with_root)
    return [t.requires_grad_() for t in inputs]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op, eps, with_root", [
    ("kcs_forward", 0.0, False), ("bone_decompose", 0.0, False), ("bone_decompose", 0.3, False),
    ("kcs_inverse", 0.0, False), ("kcs_inverse", 0.0, True)])
def test_gradcheck(backend, device, op, eps, with_root, rng):
    # the interpreter is slow: Triton gets a smaller tree and gradcheck's fast mode
    interpreted = backend == "triton" and device == "cpu"
    sk = fs.Skeleton(random_parents(6, rng)) if interpreted else fs.Skeleton.h36m16()
    inputs = _gradcheck_inputs(op, sk, device, with_root)
    if op == "bone_decompose" and eps > 0:
        # some bones shorter than eps, so the clamped branch is exercised too
        inputs[0].data[..., 1, :] = inputs[0].data[..., sk.parents[1], :] + 0.05 * torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: call(op, sk, a, backend, eps), inputs, fast_mode=interpreted)


@pytest.mark.skipif(fs._extension.C is None, reason="double backward is registered on the C++ ops")
def test_double_backward_of_linear_ops():
    sk = fs.Skeleton.h36m16()
    x = torch.randn(3, 16, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 15, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: fs.ops.kcs_forward(x, sk, backend="cpp"), (x,))
    assert torch.autograd.gradgradcheck(lambda b, r: fs.ops.kcs_inverse(b, sk, r, backend="cpp"), (b, r))
    unit, _ = fs.ops.bone_decompose(x, sk, backend="cpp")
    (g,) = torch.autograd.grad(unit.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward through fastsmall.ops.bone_decompose"):
        g.sum().backward()


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("used", ["unit", "length"])
def test_bone_decompose_with_one_output_used(backend, device, used):
    sk = fs.Skeleton.h36m16()
    x = torch.randn(4, 16, 3, dtype=torch.float64, device=device)
    grads = []
    for be in (backend, "reference"):
        xx = x.detach().cpu().to(device if be == backend else "cpu").requires_grad_()
        unit, length = fs.ops.bone_decompose(xx, sk, backend=be)
        out = unit if used == "unit" else length
        (g,) = torch.autograd.grad((out * torch.arange(out.numel(), dtype=out.dtype, device=out.device)
                                    .reshape(out.shape).sin()).sum(), xx)
        grads.append(g.cpu())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # the interpreter's 0/0, wanted here
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_zero_length_bone_eps_convention(backend, device):
    sk = fs.Skeleton.h36m16()
    x = torch.randn(2, 16, 3, dtype=torch.float64, device=device)
    x[:, 1] = x[:, 0]  # bone 0 (Hip -> RHip) has zero length
    # eps = 0: PoseAug's b / ||b||, a zero-length bone gives NaN (0 / 0), as there
    unit, length = fs.ops.bone_decompose(x, sk, backend=backend)
    assert torch.isnan(unit[:, 0]).all() and (length[:, 0] == 0).all()
    assert torch.isfinite(unit[:, 1:]).all()
    # eps > 0: b / max(||b||, eps), finite values and gradients
    xx = x.clone().requires_grad_()
    unit, length = fs.ops.bone_decompose(xx, sk, eps=1e-6, backend=backend)
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
