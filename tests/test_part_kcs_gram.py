"""The part-aware KCS Gram on every backend against the reference and PoseAug's formula."""
import pytest
import torch

import fastsmall as fs
from fastsmall import _extension as ext
from conftest import assert_fake_matches_real, available_backends, random_parents

BACKENDS = available_backends()
LAYOUTS = ["masked", "compact"]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-12, rtol=1e-12),
       torch.float16: dict(atol=4e-3, rtol=4e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
SK = fs.Skeleton.h36m16()


def random_skeleton(J, rng):
    NB = J - 1
    parts = {}
    for p in range(rng.randint(1, 5)):
        bones = rng.sample(range(NB), rng.randint(1, NB))  # shuffled order, parts may overlap
        parts[f"part{p}"] = bones
    return fs.Skeleton(random_parents(J, rng), parts=parts)


def check(unit, sk, layout, backend, tol=None):
    tol = tol or TOL[unit.dtype]
    leaf = unit.detach().clone().requires_grad_()
    out = fs.ops.part_kcs_gram(leaf, sk, layout, backend=backend)
    ref_leaf = unit.detach().cpu().clone().requires_grad_()
    ref = fs.ops.part_kcs_gram(ref_leaf, sk, layout, backend="reference")
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out.detach().cpu(), ref.detach(), **tol)
    if out.numel():
        cot = torch.randn_like(ref)
        (g,) = torch.autograd.grad(out, leaf, cot.to(out.device))
        (rg,) = torch.autograd.grad(ref, ref_leaf, cot)
        torch.testing.assert_close(g.cpu(), rg, **tol)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [2, 3])
@pytest.mark.parametrize("batch", [(), (6,), (2, 3), (0,)])
def test_h36m16_matches_reference(backend, device, layout, dtype, D, batch):
    check(torch.randn(*batch, 15, D, dtype=dtype, device=device), SK, layout, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("J", [2, 5, 17, 40])
def test_random_parts_match_reference(backend, device, layout, J, rng):
    sk = random_skeleton(J, rng)
    unit = torch.randn(rng.choice([1, 4, 9]), J - 1, rng.choice([2, 3]), dtype=torch.float64, device=device)
    check(unit, sk, layout, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_equals_poseaug_kcs_layers(backend, device):
    """PoseAug's kcs_layer_{lh,rh,ll,rl,hb}: mask the bone vectors, then bv @ bv^T, in this order."""
    poseaug_parts = [[7, 9, 10, 11], [7, 12, 13, 14], [0, 1, 2, 3, 6], [0, 3, 4, 5, 6], [0, 3, 6, 7, 8, 9, 12]]
    x = torch.randn(7, 16, 3, dtype=torch.float64, device=device)
    unit, _ = fs.ops.bone_decompose(x, SK, backend=backend)
    out = fs.ops.part_kcs_gram(unit, SK, backend=backend)
    for p, idx in enumerate(poseaug_parts):
        mask = torch.zeros_like(unit)
        mask[:, idx, :] = 1
        bv = unit * mask
        psi = torch.matmul(bv, bv.permute(0, 2, 1).contiguous())
        torch.testing.assert_close(out[:, p], psi.view(7, -1))
    compact = fs.ops.part_kcs_gram(unit, SK, "compact", backend=backend)
    assert compact.shape == (7, 131)
    # the first block of the compact layout is the left arm's 4 x 4 Gram in part order
    arm = unit[:, poseaug_parts[0]]
    torch.testing.assert_close(compact[:, :16], (arm @ arm.transpose(1, 2)).reshape(7, 16))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_and_low_precision(backend, device, layout):
    unit = torch.randn(15, 8, 3, dtype=torch.float64, device=device).transpose(0, 1)
    check(unit, SK, layout, backend)
    if backend != "reference":
        for dtype in (torch.float16, torch.bfloat16):
            check(torch.randn(5, 15, 3, device=device).to(dtype), SK, layout, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(backend, device, layout, rng):
    interpreted = backend == "triton" and device == "cpu"
    sk = random_skeleton(6, rng) if interpreted else SK
    unit = torch.randn(2, sk.num_bones, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: fs.ops.part_kcs_gram(u, sk, layout, backend=backend), (unit,),
                                    fast_mode=interpreted)


needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")
PB = [b for bones in SK.part_bones for b in bones]
PS = [len(bones) for bones in SK.part_bones]
SAMPLES = [
    ("part_kcs_gram", (torch.randn(4, 15, 3, requires_grad=True), PB, PS, False)),
    ("part_kcs_gram", (torch.randn(2, 3, 15, 2, dtype=torch.float64, requires_grad=True), PB, PS, True)),
    ("part_kcs_gram", (torch.randn(0, 15, 3, requires_grad=True), PB, PS, True)),
    ("part_kcs_gram", (torch.randn(15, 5, 3).transpose(0, 1), [2, 0, 1], [1, 2], False)),
    ("part_kcs_gram_backward", (torch.randn(4, 5, 225), torch.randn(4, 15, 3), PB, PS, False)),
    ("part_kcs_gram_backward", (torch.randn(3, 131, dtype=torch.float64), torch.randn(3, 15, 3, dtype=torch.float64),
                                PB, PS, True)),
]


@needs_cpp
@pytest.mark.parametrize("name, args", SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck_and_fake_strides(name, args):
    op = getattr(torch.ops.fastsmall, name)
    torch.library.opcheck(op.default, args)
    assert_fake_matches_real(op, args)


@needs_cpp
def test_compile_fullgraph_discriminator_features():
    def features(x):
        unit, _ = fs.ops.bone_decompose(x, SK, eps=1e-6)
        return (fs.ops.part_kcs_gram(unit, SK).sin().sum() + fs.ops.part_kcs_gram(unit, SK, "compact").sum())

    x = torch.randn(6, 16, 3, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(features, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x), x)[0]
    want = torch.autograd.grad(features(x), x)[0]
    torch.testing.assert_close(got, want)


@needs_cpp
def test_double_backward_is_a_clear_error():
    unit = torch.randn(3, 15, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fs.ops.part_kcs_gram(unit, SK, backend="cpp").sum(), unit, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward through fastsmall.ops.part_kcs_gram"):
        g.sum().backward()
    # the reference supports it (e.g. for a gradient penalty)
    (g,) = torch.autograd.grad(fs.ops.part_kcs_gram(unit, SK, backend="reference").sum(), unit, create_graph=True)
    g.sum().backward()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_bad_input(backend, device):
    unit = torch.randn(4, 15, 3, device=device)
    with pytest.raises(ValueError, match="skeleton has no parts"):
        fs.ops.part_kcs_gram(unit, fs.Skeleton(SK.parents), backend=backend)
    with pytest.raises(ValueError, match="layout must be one of"):
        fs.ops.part_kcs_gram(unit, SK, "dense", backend=backend)
    with pytest.raises(ValueError, match="unit has 16 bones"):
        fs.ops.part_kcs_gram(torch.randn(4, 16, 3, device=device), SK, backend=backend)
    with pytest.raises(TypeError, match="unit must be a floating-point tensor"):
        fs.ops.part_kcs_gram(torch.ones(4, 15, 3, dtype=torch.int64, device=device), SK, backend=backend)


@needs_cpp
@pytest.mark.parametrize("args, message", [
    ((torch.randn(4, 15, 3), [0, 20], [2], False), "part 0 refers to bone 20"),
    ((torch.randn(4, 15, 3), [0, 1, 1], [3], False), "lists bone 1 twice"),
    ((torch.randn(4, 15, 3), [0, 1], [3], False), "part_sizes sum to 3 but part_bones has 2"),
    ((torch.randn(4, 15, 3), [0, 1], [2, 0], False), r"part_sizes\[1\] = 0 must be >= 1"),
    ((torch.randn(4, 15, 3), [], [], True), "at least one part"),
    ((torch.randn(4, 15, 4), [0], [1], True), "last dimension D of 2 or 3"),
])
def test_cpp_kernel_errors(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastsmall.part_kcs_gram(*args)


# ---- the C++ kernel's pose tiles: exact bits on every instruction set -------------------------------
# The kernel runs poses in transposed tiles of 32, vectors across poses, compiled per instruction set.
# Each lane must compute exactly what a per-pose loop does in float32 (same products and sums, in the
# same order, no fused multiply-add), so the expected bits are computed here with separate torch
# float32 operations in that order. Batches cross and miss tile boundaries.

def _entries(part_bones, part_sizes, NB, compact):
    """(i, j, pos1, pos2) of every Gram entry, in the kernel's order (csrc/parts.h)."""
    out, start, offset = [], 0, 0
    for p, n in enumerate(part_sizes):
        bones = part_bones[start:start + n]
        for a in range(n):
            for b in range(a, n):
                i, j = bones[a], bones[b]
                if compact:
                    out.append((i, j, offset + a * n + b, offset + b * n + a))
                else:
                    out.append((i, j, p * NB * NB + i * NB + j, p * NB * NB + j * NB + i))
        start, offset = start + n, offset + n * n
    return out, (offset if compact else len(part_sizes) * NB * NB)


def _exact_forward_backward(u, grad, part_bones, part_sizes, compact):
    B, NB, D = u.shape
    entries, S = _entries(part_bones, part_sizes, NB, compact)
    out = torch.zeros(B, S, dtype=u.dtype)
    acc = torch.zeros_like(u)
    for i, j, p1, p2 in entries:
        dot = u[:, i, 0] * u[:, j, 0] + u[:, i, 1] * u[:, j, 1]
        if D == 3:
            dot = dot + u[:, i, 2] * u[:, j, 2]
        out[:, p1] = dot
        out[:, p2] = dot
        g = grad[:, p1] + grad[:, p2]
        acc[:, i] = acc[:, i] + g[:, None] * u[:, j]
        if i != j:
            acc[:, j] = acc[:, j] + g[:, None] * u[:, i]
    return out, acc


_TILE_SCRIPT = r"""
import sys, torch
sys.path.insert(0, "tests")
from test_part_kcs_gram import PB, PS, _exact_forward_backward
torch.manual_seed(0)
for compact in (False, True):
    for B in (1, 31, 32, 33, 100):
        for D in (2, 3):
            u = torch.randn(B, 15, D)
            S = 131 if compact else 5 * 225
            grad = torch.randn(B, S)
            want, want_grad = _exact_forward_backward(u, grad, PB, PS, compact)
            got = torch.ops.fastsmall.part_kcs_gram(u, PB, PS, compact)
            got_grad = torch.ops.fastsmall.part_kcs_gram_backward(grad, u, PB, PS, compact)
            assert torch.equal(got.reshape(B, -1), want), (compact, B, D)
            assert torch.equal(got_grad, want_grad), (compact, B, D, (got_grad - want_grad).abs().max())
print("ok")
"""


@needs_cpp
@pytest.mark.parametrize("simd_bytes", [16, 32, 64])
def test_cpp_tiles_give_the_per_pose_bits_on_every_instruction_set(simd_bytes):
    """FASTSMALL_SIMD_BYTES caps the instruction set (16: SSE2, 32: AVX2, 64: AVX-512 where the CPU
    has it, else the widest it has): every instantiation gives the per-pose loop's bits."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    env = dict(os.environ, FASTSMALL_SIMD_BYTES=str(simd_bytes))
    out = subprocess.run([sys.executable, "-c", "import fastsmall\n" + _TILE_SCRIPT], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
