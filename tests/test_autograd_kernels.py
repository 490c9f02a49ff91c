"""The C++ autograd kernels (csrc/autograd.cpp) of the ops called at small batches.

They replace torch.library.register_autograd's Python layer for these ops; the formulas are those
of the ops' OpDef tables (fastsmall/ops/<family>.py), which remain the formulas of the Triton-direct
route. Checked here, table-driven over the ops: the kernels are registered and the Python formulas
are not registered on top of them; gradients are bit-identical to the same formulas run as a Python
autograd.Function around the same kernels; which inputs get gradients (needs_input_grad, an optional
root, an unused output); saved tensors are version-checked; graphs are freed / retained as in
PyTorch; double backward as documented. Float64 gradcheck, opcheck and torch.compile of the
registered ops are in each family's test file (test_kcs.py, test_part_kcs_gram.py,
test_distribution_align.py).
"""
from __future__ import annotations

import importlib

import pytest
import torch

import fastsmall as fs
from fastsmall import _extension as ext
from fastsmall.ops._dispatch import autograd_function, has_cpp_autograd

pytestmark = pytest.mark.skipif(ext.C is None, reason=f"the C++ extension is not built: {ext.CPP_ERROR}")

SK = fs.Skeleton.h36m16()
P = list(SK.parents)
PB, PS = SK.op_parts
F = torch.ops.fastsmall

CPP_AUTOGRAD = ("kcs_forward", "kcs_forward_backward", "bone_decompose", "bone_decompose_backward", "kcs_inverse",
                "kcs_inverse_backward", "part_kcs_gram", "part_kcs_gram_backward", "masked_cross_entropy",
                "masked_cross_entropy_backward", "distribution_align", "softmax_batch_mean", "bn_act_dropout",
                "bn_act_dropout_backward")


def _family(module: str, name: str):
    return getattr(importlib.import_module(f"fastsmall.ops.{module}"), name)


def _python_formulas(family, name):
    """The op's OpDef formulas as a Python autograd.Function around the registered op (what
    register_autograd ran before the C++ kernels)."""
    return autograd_function(f"_Py_{name}", getattr(F, name), family.defs[name].formulas(F)).apply


# (op, family, inputs(generator) -> (differentiable tensors, the op's other arguments builder))
def _cases():
    kcs = _family("kcs", "_KCS")
    gram = _family("part_kcs_gram", "_GRAM")
    align = _family("distribution_align", "_ALIGN")

    def kcs_forward(g, B):
        return kcs, (torch.randn(B, 16, 3, generator=g, dtype=torch.float64),), lambda x: (x, P)

    def bone_decompose(g, B):
        return kcs, (torch.randn(B, 16, 3, generator=g, dtype=torch.float64),), lambda x: (x, P, 0.0)

    def kcs_inverse(g, B):
        return (kcs, (torch.randn(B, 15, 3, generator=g, dtype=torch.float64),
                      torch.randn(B, 1, 3, generator=g, dtype=torch.float64)), lambda b, r: (b, P, r))

    def part_kcs_gram(g, B):
        compact = B % 2 == 0
        return gram, (torch.randn(B, 15, 3, generator=g, dtype=torch.float64),), lambda u: (u, PB, PS, compact)

    def masked_cross_entropy(g, B):
        target = torch.randint(0, 10, (B,), generator=g)
        mask = torch.rand(B, generator=g) < 0.7
        return align, (torch.randn(B, 10, generator=g, dtype=torch.float64),), lambda z: (z, target, mask)

    return {"kcs_forward": kcs_forward, "bone_decompose": bone_decompose, "kcs_inverse": kcs_inverse,
            "part_kcs_gram": part_kcs_gram, "masked_cross_entropy": masked_cross_entropy}


CASES = _cases()


def test_the_ops_have_cpp_autograd_kernels_and_no_python_formulas():
    for name in CPP_AUTOGRAD:
        assert has_cpp_autograd(name), name
        # register_autograd would have put a Python kernel (registered at torch/library.py) on the op's
        # Autograd key: the dispatcher's table names where the kernel was registered
        table = torch._C._dispatch_dump(f"fastsmall::{name}")
        autograd = [line for line in table.splitlines() if line.startswith("Autograd")]
        assert len(autograd) == 1 and "csrc/autograd.cpp" in autograd[0], table
    # the Triton-direct route keeps the Python formulas: the op tables still hold them
    assert all(_family(m, f).defs[name].formulas is not None for m, f, name in (
        ("kcs", "_KCS", "kcs_forward"), ("bn_act_dropout", "_MLP", "bn_act_dropout"),
        ("distribution_align", "_ALIGN", "masked_cross_entropy")))


@pytest.mark.parametrize("B", [1, 7, 32, 33, 100])
@pytest.mark.parametrize("op", list(CASES))
def test_gradients_are_those_of_the_python_formulas_bit_for_bit(op, B):
    g = torch.Generator().manual_seed(B)
    family, inputs, args_of = CASES[op](g, B)
    python_op = _python_formulas(family, op)
    registered = getattr(F, op)

    def grads(fn):
        ins = [t.clone().requires_grad_() for t in inputs]
        outs = fn(*args_of(*ins))
        outs = outs if isinstance(outs, tuple) else (outs,)
        cots = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
                for i, o in enumerate(outs)]
        return [o.detach() for o in outs], torch.autograd.grad(outs, ins, cots)

    (outs_cpp, grads_cpp), (outs_py, grads_py) = grads(registered), grads(python_op)
    for a, b in zip(outs_cpp + list(grads_cpp), outs_py + list(grads_py)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op, call", [
    ("KcsForward", lambda x: fs.ops.kcs_forward(x, SK)),
    ("BoneDecompose", lambda x: fs.ops.bone_decompose(x, SK)[0]),
    ("KcsInverse", lambda x: fs.ops.kcs_inverse(x[:, :15], SK)),
    ("PartKcsGram", lambda x: fs.ops.part_kcs_gram(x[:, :15], SK, "compact")),
    ("MaskedCrossEntropy", lambda x: fs.ops.masked_cross_entropy(x.flatten(1)[:, :10], torch.zeros(2, dtype=torch.long),
                                                                 torch.ones(2, dtype=torch.bool))),
    ("BnActDropout", lambda x: fs.ops.bn_act_dropout(x.flatten(1), training=True, p=0.5)),
])
def test_the_public_ops_record_the_cpp_nodes(op, call):
    out = call(torch.randn(2, 16, 3, requires_grad=True))
    assert out.grad_fn.name() == f"torch::autograd::CppNode<fastsmall::(anonymous namespace)::{op}>"


@pytest.mark.parametrize("N, C, mode, p, slope", [(2, 3, "batch", 0.0, 0.0), (33, 5, "batch", 0.3, 0.2),
                                                   (100, 40, "eval", 0.25, 0.1), (7, 1, "batch", 0.0, 0.0)])
@pytest.mark.parametrize("needs", ["all", "y only", "params only"])
def test_bn_act_dropout_gradients_are_those_of_the_python_formulas_bit_for_bit(N, C, mode, p, slope, needs):
    """bn_act_dropout's C++ node against its Python formulas around the same kernels: output, statistics
    and the gradients of y, weight, bias and residual (float32 parameters of a float64 y: cast back),
    for each set of inputs that require grad."""
    family = _family("bn_act_dropout", "_MLP")
    python_op = _python_formulas(family, "bn_act_dropout")
    g = torch.Generator().manual_seed(N * C)
    y = torch.randn(N, C, generator=g, dtype=torch.float64)
    w, b = torch.randn(C, generator=g), torch.randn(C, generator=g)
    mean = var = None
    if mode == "eval":
        mean, var = torch.randn(C, generator=g, dtype=torch.float64), torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    r = torch.randn(N, C, generator=g, dtype=torch.float64)
    seed = torch.tensor([N + 5])
    grad_of = {"all": (True, True, True), "y only": (True, False, True), "params only": (False, True, False)}[needs]
    cot = torch.randn(N, C, generator=g, dtype=torch.float64)

    def run(fn):
        ins = [t.clone().requires_grad_(need) for t, need in zip((y, w, b, r), (grad_of[0], grad_of[1], grad_of[1],
                                                                               grad_of[2]))]
        out, m, v = fn(ins[0], ins[1], ins[2], mean, var, ins[3], seed, 1e-5, slope, p)
        assert not m.requires_grad and not v.requires_grad
        wanted = [t for t in ins if t.requires_grad]
        return [out.detach(), m, v, *torch.autograd.grad(out, wanted, cot)]

    cpp, py = run(F.bn_act_dropout), run(python_op)
    assert len(cpp) == len(py) and all(a.dtype == c.dtype and torch.equal(a, c) for a, c in zip(cpp, py))


def test_the_alignment_targets_never_require_grad():
    logits = torch.randn(6, 4, requires_grad=True)
    prior, running = torch.rand(4) + 0.1, torch.rand(4) + 0.1
    for out in (*F.distribution_align(logits, prior, running, 1.0, 0.5, 1e-6, True), F.softmax_batch_mean(logits),
                *fs.ops.distribution_align(logits, prior, running, 0.5, 0.5)):
        assert not out.requires_grad and out.grad_fn is None
    probs = F.distribution_align(logits, prior, running, 1.0, 0.5, 1e-6, True)[0]
    want = fs.reference.distribution_align(logits.detach(), prior, running, 1.0, 0.5, 1e-6, True)[0]
    torch.testing.assert_close(probs, want)


def test_no_graph_without_inputs_that_require_grad():
    x = torch.randn(8, 16, 3)
    assert fs.ops.kcs_forward(x, SK).grad_fn is None
    unit, length = fs.ops.bone_decompose(x.requires_grad_(), SK)
    assert unit.grad_fn is not None and unit.grad_fn is length.grad_fn
    with torch.no_grad():
        assert fs.ops.kcs_inverse(torch.randn(8, 15, 3, requires_grad=True), SK).grad_fn is None


def test_grad_flows_only_to_the_inputs_that_require_it():
    bones = torch.randn(6, 15, 3, dtype=torch.float64)
    root = torch.randn(6, 1, 3, dtype=torch.float64, requires_grad=True)
    x = fs.ops.kcs_inverse(bones, SK, root)
    (g,) = torch.autograd.grad(x.sum(), root)
    torch.testing.assert_close(g, torch.full_like(root, 16.0))  # every joint moves with the root
    b = bones.clone().requires_grad_()
    x = fs.ops.kcs_inverse(b, SK, torch.randn(6, 1, 3, dtype=torch.float64))  # root without grad
    x.sum().backward()
    assert b.grad is not None and b.grad.shape == b.shape
    z = torch.randn(5, 10, dtype=torch.float64)
    mask = torch.ones(5, dtype=torch.float64, requires_grad=True)  # a mask is a target: no gradient
    loss = fs.ops.masked_cross_entropy(z.requires_grad_(), torch.zeros(5, dtype=torch.long), mask)
    gz, gm = torch.autograd.grad(loss, (z, mask), allow_unused=True)
    assert gz is not None and gm is None


@pytest.mark.parametrize("used", ["unit", "length", "neither"])
def test_bone_decompose_unused_outputs_get_no_gradient_work(used):
    x = torch.randn(5, 16, 3, dtype=torch.float64, requires_grad=True)
    unit, length = fs.ops.bone_decompose(x, SK)
    ref_unit, ref_length = fs.reference.bone_decompose(x, SK)
    if used == "neither":  # a graph that reaches bone_decompose with no gradient for either output
        out = (unit.sum() * 0).detach() + x.sum()
        (g,) = torch.autograd.grad(out, x)
        torch.testing.assert_close(g, torch.ones_like(x))
        return
    got = torch.autograd.grad((unit if used == "unit" else length).pow(2).sum(), x)[0]
    want = torch.autograd.grad((ref_unit if used == "unit" else ref_length).pow(2).sum(), x)[0]
    torch.testing.assert_close(got, want)


def test_saved_inputs_are_version_checked():
    for op, make in (("bone_decompose", lambda x: fs.ops.bone_decompose(x, SK)[1].sum()),
                     ("part_kcs_gram", lambda x: fs.ops.part_kcs_gram(x[:, :15], SK, "compact").sum())):
        x = torch.randn(4, 16, 3, requires_grad=True).clone()
        loss = make(x)
        with torch.no_grad():
            x.add_(1.0)  # overwrites what the backward needs
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_graph_is_freed_unless_retained():
    x = torch.randn(4, 16, 3, requires_grad=True)
    loss = fs.ops.part_kcs_gram(fs.ops.bone_decompose(x, SK)[0], SK).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()  # retained: runs again and accumulates
    torch.testing.assert_close(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_double_backward_of_the_linear_ops_is_their_adjoint():
    x = torch.randn(3, 16, 3, dtype=torch.float64, requires_grad=True)
    bones = torch.randn(3, 15, 3, dtype=torch.float64, requires_grad=True)
    root = torch.randn(3, 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: fs.ops.kcs_forward(t, SK), (x,))
    assert torch.autograd.gradgradcheck(lambda b, r: fs.ops.kcs_inverse(b, SK, r), (bones, root))


@pytest.mark.parametrize("op, call", [
    ("bone_decompose", lambda x: fs.ops.bone_decompose(x, SK)[0]),
    ("part_kcs_gram", lambda x: fs.ops.part_kcs_gram(x[:, :15], SK)),
    ("masked_cross_entropy", lambda x: fs.ops.masked_cross_entropy(x.flatten(1)[:, :10],
                                                                  torch.zeros(3, dtype=torch.long),
                                                                  torch.ones(3, dtype=torch.bool))),
    ("bn_act_dropout", lambda x: fs.ops.bn_act_dropout(x.flatten(1), training=True, p=0.3)),
])
def test_double_backward_of_the_others_raises_the_documented_error(op, call):
    x = torch.randn(3, 16, 3, dtype=torch.float64, requires_grad=True)
    out = call(x)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)  # the first backward works
    with pytest.raises(NotImplementedError, match=rf"double backward through fastsmall\.ops\.{op} is not "
                                                  r"implemented; use backend='reference'"):
        g.sum().backward()
