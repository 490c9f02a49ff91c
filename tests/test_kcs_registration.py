"""The KCS ops as registered torch ops: opcheck, fakes, torch.compile."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastsmall as fs
from fastsmall import _extension as ext

pytestmark = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")

SK = fs.Skeleton.h36m16()
P = list(SK.parents)
OPS = torch.ops.fastsmall if ext.C is not None else None


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


SAMPLES = _samples()


@pytest.mark.parametrize("name, args", SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name).default, args)


@pytest.mark.parametrize("name, args", SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_fake_and_real_outputs_have_same_strides(name, args):
    real = getattr(OPS, name)(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = getattr(OPS, name)(*fake_args)
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


def _pipeline(x, root):
    bones = fs.ops.kcs_forward(x, SK)
    unit, length = fs.ops.bone_decompose(x, SK, eps=1e-6)
    y = fs.ops.kcs_inverse(unit * length * 1.1 + 0.1 * bones, SK, root=root)
    return (y.sin() * y).sum() + length.sum()


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


def test_compile_fullgraph_inductor():
    x = torch.randn(5, 16, 3, requires_grad=True)
    root = torch.randn(5, 1, 3, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, fullgraph=True, backend="inductor")
    loss = compiled(x, root)
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
