"""``out=`` on the pose ops (kcs_forward, bone_decompose, kcs_inverse, part_kcs_gram): bulk use
without allocating, as aten's out= functions.

Table-driven over the ops and every backend: the result written into ``out`` equals the op's own
result bit for bit and the returned tensor is ``out`` itself; the registered ``.out`` overloads pass
opcheck and compile with fullgraph (auto-functionalised); bad outputs (shape, dtype, device,
non-contiguous, overlapping an input or each other) are clear errors naming the argument; inputs or
outputs that require grad are refused in grad mode (out= is not differentiable) and accepted under
no_grad; the outputs' version counters move.
"""
from __future__ import annotations

import pytest
import torch

import fastsmall as fs
from conftest import available_backends, device_for
from fastsmall import _extension as ext

SK = fs.Skeleton.h36m16()
P = list(SK.parents)
PB, PS = SK.op_parts
BACKENDS = available_backends()
needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")


def _cases(device, dtype=torch.float32, batch=(6,)):
    """op -> (call(out=..., backend=...), the plain result's shapes); inputs made once per case."""
    g = torch.Generator().manual_seed(sum(batch))
    x = torch.randn(*batch, 16, 3, generator=g, dtype=dtype).to(device)
    bones = torch.randn(*batch, 15, 3, generator=g, dtype=dtype).to(device)
    root = torch.randn(*batch, 1, 3, generator=g, dtype=dtype).to(device)
    unit = torch.nn.functional.normalize(bones, dim=-1)
    return {
        "kcs_forward": lambda **kw: fs.ops.kcs_forward(x, SK, **kw),
        "bone_decompose": lambda **kw: fs.ops.bone_decompose(x, SK, **kw),
        "kcs_inverse": lambda **kw: fs.ops.kcs_inverse(bones, SK, root, **kw),
        "kcs_inverse no root": lambda **kw: fs.ops.kcs_inverse(bones, SK, **kw),
        "part_kcs_gram masked": lambda **kw: fs.ops.part_kcs_gram(unit, SK, **kw),
        "part_kcs_gram compact": lambda **kw: fs.ops.part_kcs_gram(unit, SK, "compact", **kw),
    }, (x, bones, root, unit)


OPS = list(_cases("cpu")[0])


def _empty_like_result(result):
    return tuple(torch.full_like(r, float("nan")) for r in result) if isinstance(result, tuple) else \
        torch.full_like(result, float("nan"))


@pytest.mark.parametrize("batch", [(6,), (0,), (2, 33), ()])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_out_is_written_with_the_ops_bits(backend, device, op, batch):
    if batch == () and op.startswith("part"):
        batch = (1,)
    call = _cases(device_for(backend), batch=batch)[0][op]
    want = call(backend=backend)
    out = _empty_like_result(want)
    got = call(out=out, backend=backend)
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and all(g is o for g, o in zip(got, out))
        for o, w in zip(out, want):
            assert torch.equal(o, w) or (o.isnan() == w.isnan()).all() and torch.equal(o[~o.isnan()], w[~w.isnan()])
    else:
        assert got is out and torch.equal(out, want)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_out_in_other_dtypes(dtype):
    for op, call in _cases("cpu", dtype)[0].items():
        want = call()
        out = _empty_like_result(want)
        call(out=out)
        for o, w in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
            assert o.dtype == dtype and torch.equal(o, w), op


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_bad_outputs_are_clear_errors(backend, device):
    calls, (x, *_) = _cases(device_for(backend))
    call = calls["kcs_forward"]
    good = call(backend=backend)
    bad = [
        (torch.empty(6, 15, 2, device=x.device), ValueError, r"out must have shape \(6, 15, 3\)"),
        (torch.empty(6, 15, 3, dtype=torch.float64, device=x.device), TypeError, "out has dtype torch.float64"),
        (torch.empty(6, 3, 15, device=x.device).transpose(1, 2), ValueError, "out must be contiguous"),
        (torch.empty(6, 15, 3, dtype=torch.long, device=x.device), TypeError, "out"),
        ("not a tensor", TypeError, "out must be a torch.Tensor"),
    ]
    for out, error, message in bad:
        with pytest.raises(error, match=message):
            call(out=out, backend=backend)
    assert torch.equal(call(backend=backend), good)  # nothing was harmed
    with pytest.raises(ValueError, match="out shares memory with x"):
        fs.ops.kcs_forward(x, SK, out=x.view(-1)[:270].view(6, 15, 3), backend=backend)
    unit, length = fs.ops.bone_decompose(x, SK, backend=backend)
    with pytest.raises(ValueError, match="shares memory with"):
        buf = torch.empty(6 * 15 * 3, device=x.device)
        fs.ops.bone_decompose(x, SK, out=(buf.view(6, 15, 3), buf[:90].view(6, 15, 1)), backend=backend)
    with pytest.raises(TypeError, match=r"out must be a pair of tensors \(unit, length\)"):
        fs.ops.bone_decompose(x, SK, out=unit, backend=backend)
    # disjoint slices of one buffer are fine
    buf = torch.empty(6 * 15 * 4, device=x.device)
    fs.ops.bone_decompose(x, SK, out=(buf[:270].view(6, 15, 3), buf[270:].view(6, 15, 1)), backend=backend)
    assert torch.equal(buf[:270].view(6, 15, 3), unit) and torch.equal(buf[270:].view(6, 15, 1), length)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_out_is_not_differentiable(backend, device):
    calls, (x, bones, root, unit) = _cases(device_for(backend))
    out = torch.empty(6, 15, 3, device=x.device)
    with pytest.raises(RuntimeError, match="out= is for bulk use without autograd, but x requires grad"):
        fs.ops.kcs_forward(x.clone().requires_grad_(), SK, out=out, backend=backend)
    with pytest.raises(RuntimeError, match="out= is for bulk use without autograd, but root requires grad"):
        fs.ops.kcs_inverse(bones, SK, root.clone().requires_grad_(), out=torch.empty(6, 16, 3, device=x.device),
                           backend=backend)
    with pytest.raises(RuntimeError, match="but out requires grad"):
        fs.ops.kcs_forward(x, SK, out=torch.empty(6, 15, 3, device=x.device, requires_grad=True), backend=backend)
    with torch.no_grad():  # as aten: fine without grad mode
        fs.ops.kcs_forward(x.clone().requires_grad_(), SK, out=out, backend=backend)
    assert not out.requires_grad and torch.equal(out, fs.ops.kcs_forward(x, SK, backend=backend))


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_outputs_versions_move(backend, device):
    """A tensor saved by a graph and then overwritten through out= is caught by autograd."""
    device = device_for(backend)
    z = torch.zeros(4, 15, 3, device=device)
    w = torch.randn(4, 15, 3, device=device, requires_grad=True)
    loss = (w * z).sum()  # the product saves z for w's gradient
    v0 = z._version
    fs.ops.kcs_forward(torch.randn(4, 16, 3, device=device), SK, out=z, backend=backend)
    assert z._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---- the registered .out overloads ------------------------------------------------------------------

def _out_samples():
    x, bones, root = torch.randn(5, 16, 3), torch.randn(5, 15, 3), torch.randn(5, 1, 3)
    return [
        ("kcs_forward", (x, P), {"out": torch.empty(5, 15, 3)}),
        ("bone_decompose", (x, P, 0.0), {"unit": torch.empty(5, 15, 3), "length": torch.empty(5, 15, 1)}),
        ("kcs_inverse", (bones, P, root), {"out": torch.empty(5, 16, 3)}),
        ("kcs_inverse", (bones, P, None), {"out": torch.empty(5, 16, 3)}),
        ("part_kcs_gram", (bones, PB, PS, True), {"out": torch.empty(5, sum(n * n for n in PS))}),
        ("part_kcs_gram", (bones, PB, PS, False), {"out": torch.empty(5, len(PS), 225)}),
    ]


@needs_cpp
@pytest.mark.parametrize("name, args, outs", _out_samples(), ids=[f"{s[0]}-{i}" for i, s in enumerate(_out_samples())])
def test_opcheck_of_the_out_overloads(name, args, outs):
    torch.library.opcheck(getattr(torch.ops.fastsmall, name).out, args, outs)


@needs_cpp
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_out_compiles_fullgraph(compiler):
    x = torch.randn(7, 16, 3)

    def pipeline(x, unit, length, gram):
        fs.ops.bone_decompose(x, SK, out=(unit, length))
        fs.ops.part_kcs_gram(unit, SK, "compact", out=gram)
        return gram.sum()

    outs = (torch.empty(7, 15, 3), torch.empty(7, 15, 1), torch.empty(7, sum(n * n for n in PS)))
    total = torch.compile(pipeline, fullgraph=True, backend=compiler)(x, *outs)
    unit, length = fs.ops.bone_decompose(x, SK)
    gram = fs.ops.part_kcs_gram(unit, SK, "compact")
    assert torch.equal(outs[0], unit) and torch.equal(outs[1], length) and torch.equal(outs[2], gram)
    torch.testing.assert_close(total, gram.sum())


@needs_cpp
def test_the_cpp_kernels_reject_bad_outputs_themselves():
    x = torch.randn(3, 16, 3)
    with pytest.raises(RuntimeError, match="fastsmall: out must have shape"):
        torch.ops.fastsmall.kcs_forward.out(x, P, out=torch.empty(3, 16, 3))
    with pytest.raises(RuntimeError, match="fastsmall: out shares memory with x"):
        torch.ops.fastsmall.kcs_forward.out(x, P, out=x.view(-1)[:135].view(3, 15, 3))
    with pytest.raises(RuntimeError, match="fastsmall: unit shares memory with length"):
        buf = torch.empty(135)
        torch.ops.fastsmall.bone_decompose.out(x, P, 0.0, unit=buf.view(3, 15, 3), length=buf[:45].view(3, 15, 1))
