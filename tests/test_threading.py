"""The C++ kernels give the same bits on one thread and on several, on both sides of their grain.

Small calls run on the calling thread and large ones in parallel chunks (csrc/cpu/parallel.h):
each op is called at a batch below and one far above its grain, with 1 and 2 threads, and the
results must be identical. (No timing here: bench/bench_small_batch.py measures the speed.)
"""
import pytest
import torch

import fastsmall as fs
from fastsmall import _extension as ext
from fastsmall.ops import KELS, WELS

needs_ops = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")

SK = fs.Skeleton.h36m16()


def _both(fn):
    """fn() on 1 thread and on 2 threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fn()
        torch.set_num_threads(2)
        two = fn()
    finally:
        torch.set_num_threads(threads)
    return one, two


def _flat(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]


def _pose_ops(B):
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, SK.num_joints, 3, generator=g, requires_grad=True)
    bones = torch.randn(B, SK.num_bones, 3, generator=g, requires_grad=True)
    root = torch.randn(B, 1, 3, generator=g, requires_grad=True)

    def grads(out, inputs):
        outs = _flat(out)
        return list(outs) + list(torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs]))

    return {
        "kcs_forward": lambda: grads(fs.ops.kcs_forward(x, SK, backend="cpp"), [x]),
        "bone_decompose": lambda: grads(fs.ops.bone_decompose(x, SK, backend="cpp"), [x]),
        "kcs_inverse": lambda: grads(fs.ops.kcs_inverse(bones, SK, root, backend="cpp"), [bones, root]),
        "part_kcs_gram compact": lambda: grads(fs.ops.part_kcs_gram(bones, SK, "compact", backend="cpp"), [bones]),
        "part_kcs_gram masked": lambda: grads(fs.ops.part_kcs_gram(bones, SK, "masked", backend="cpp"), [bones]),
    }


@needs_ops
@pytest.mark.parametrize("B", [64, 20000])
@pytest.mark.parametrize("op", ["kcs_forward", "bone_decompose", "kcs_inverse", "part_kcs_gram compact",
                                "part_kcs_gram masked"])
def test_pose_ops_same_bits_on_one_and_two_threads(op, B):
    one, two = _both(_pose_ops(B)[op])
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@needs_ops
@pytest.mark.parametrize("B, C", [(256, 10), (40000, 10), (2048, 1000)])
def test_logit_ops_same_bits_on_one_and_two_threads(B, C):
    g = torch.Generator().manual_seed(B + C)
    logits = torch.randn(B, C, generator=g) * 3
    prior, running = torch.rand(C, generator=g) + 0.05, torch.softmax(torch.randn(C, generator=g), 0)
    target, mask = torch.randint(0, C, (B,), generator=g), torch.rand(B, generator=g) < 0.75

    def run():
        z = logits.clone().requires_grad_()
        out = fs.ops.distribution_align(z.detach(), prior, running, 0.5, 0.9, backend="cpp")
        loss = fs.ops.masked_cross_entropy(z, target, mask, backend="cpp")
        return _flat(out) + [fs.ops.softmax_batch_mean(logits, backend="cpp"), loss, torch.autograd.grad(loss, z)[0]]

    one, two = _both(run)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@needs_ops
@pytest.mark.parametrize("numel", [1000, 600_000])
def test_masked_ops_same_bits_on_one_and_two_threads(numel):
    rows = numel // 100
    g = torch.Generator().manual_seed(numel)
    w = torch.randn(rows, 100, generator=g)
    keep = torch.rand(rows, 100, generator=g) < 0.7
    masks = [KELS(rows // 2, 50), WELS(0.5, 7), keep]

    def run():
        ws = [w.clone() for _ in masks]
        fs.ops.ke_reinit_(ws, masks, seed=3, generation=1, backend="cpp")
        ms = [w.clone() for _ in masks]
        fs.ops.masked_mul_(ms, masks, backend="cpp")
        return ws + ms

    one, two = _both(run)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
