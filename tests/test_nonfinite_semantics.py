"""One semantics for non-finite (NaN / +inf / -inf) input on every backend (README "Non-finite input").

Table-driven: fresh random inputs (float32, float64) get NaN or +-inf at random positions; every
backend must agree with the reference on where the output is NaN / +inf / -inf, on the finite values
(close) and on labels and masks (equal), and the affected set must be the documented one:

* kcs_forward / bone_decompose: exactly the bones touching a bad joint (NaN: NaN length and NaN unit
  vector; +-inf: infinite length, unit b / inf); the gradient is non-finite only on those bones' joints;
* kcs_inverse: exactly the joints below a bad bone (all joints of a pose for a bad root); a loss on
  the finite joints has finite gradients, and a loss on all joints non-finite gradients exactly on
  the bones whose subtree holds a bad joint;
* part_kcs_gram: bones outside a part are selected out of its Gram (entries outside a part are
  exactly 0, values outside it change nothing); a bad bone inside makes only its row and column bad;
* distribution_align / softmax_batch_mean: a row with a NaN or +inf logit (or only -inf) gives NaN
  probs, label 0, mask False and a NaN batch mean; a -inf logit in a finite row is probability 0;
* bone_decompose's double backward raises the documented error on the kernel backends;
* masked_mul_ multiplies (a pruned NaN / inf becomes NaN), ke_reinit_ selects (redrawn finite).

Values not affected by the bad entries must be bit-identical to what the clean input gives.
"""
import random
from typing import NamedTuple

import pytest
import torch

import fastsmall as fs
from conftest import available_backends, device_for, random_parents
from fastsmall.skeleton import part_table, tree_of

# the Triton interpreter computes in numpy, which warns on the NaN / inf arithmetic wanted here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:divide by zero encountered",
                                        "ignore:overflow encountered")

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if "reference" not in str(b)]
NAN, INF = float("nan"), float("inf")
REF_DEVICE = device_for("reference")
BAD = {"nan": NAN, "+inf": INF, "-inf": -INF}
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-11, rtol=1e-11)}
SKELETONS = {
    "h36m16": fs.Skeleton.h36m16(),
    # shuffled labels (not in topological order), overlapping random parts
    "random9": fs.Skeleton(random_parents(9, random.Random(7)),
                           parts={"a": [0, 3, 5], "b": [5, 1, 7, 2], "c": [6, 4, 0], "d": [2]}),
}


def assert_like_reference(got, want, tol, kinds=(torch.isnan, torch.isposinf, torch.isneginf)):
    """Same NaN / +inf / -inf positions as the reference (``kinds``), finite values close."""
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.shape == want.shape and got.dtype == want.dtype
    for where in kinds:
        assert torch.equal(where(got), where(want)), f"{where.__name__} positions differ from the reference"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], **tol)


def assert_unaffected_exact(got, clean, affected):
    """Entries outside ``affected`` are bit-identical to the clean input's."""
    got, clean = got.detach().cpu(), clean.detach().cpu()
    assert torch.equal(got[~affected], clean[~affected])


def bad_entries(rng, batch, rows, D):
    """One bad entry (row, coordinate) in every pose but the last, which stays clean."""
    return [(n, rng.randrange(rows), rng.randrange(D)) for n in range(batch - 1)]


# ---- the KCS family -----------------------------------------------------------------------------------

class KcsCase(NamedTuple):
    skeleton: str
    bad: str
    dtype: torch.dtype

    @property
    def id(self):
        return f"{self.skeleton}-{self.bad}-{str(self.dtype)[6:]}"


KCS_CASES = [KcsCase(s, b, d) for s in SKELETONS for b in BAD for d in DTYPES]
KCS_IDS = [c.id for c in KCS_CASES]


def _leaf(t, device):
    return t.detach().clone().to(device).requires_grad_()


@pytest.mark.parametrize("case", KCS_CASES, ids=KCS_IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_kcs_inverse_bad_bone_reaches_its_subtree_only(backend, device, case, rng):
    sk, tree = SKELETONS[case.skeleton], tree_of(SKELETONS[case.skeleton].parents)
    B, J, D = 4, sk.num_joints, 3
    bones = torch.randn(B, J - 1, D, dtype=case.dtype)
    root = torch.randn(B, 1, D, dtype=case.dtype)
    bad_bones, bad_root = bones.clone(), root.clone()
    affected = torch.zeros(B, J, D, dtype=torch.bool)
    for n, k, d in bad_entries(rng, B - 1, J - 1, D):  # poses 0 .. B-3: one bad bone each
        bad_bones[n, k, d] = BAD[case.bad]
        affected[n, list(tree.subtree_joints[k]), d] = True
    d = rng.randrange(D)  # pose B-2: a bad root coordinate reaches every joint; pose B-1 is clean
    bad_root[B - 2, 0, d] = BAD[case.bad]
    affected[B - 2, :, d] = True

    def run(b, r, be=backend, dev=device):
        return fs.ops.kcs_inverse(b.to(dev), sk, r.to(dev), backend=be)

    got = run(bad_bones, bad_root)
    assert torch.equal(~torch.isfinite(got.cpu()), affected)
    assert_unaffected_exact(got, run(bones, root), affected)
    assert_like_reference(got, run(bad_bones, bad_root, "reference", REF_DEVICE), TOL[case.dtype])


@pytest.mark.parametrize("case", KCS_CASES, ids=KCS_IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_kcs_inverse_gradient_is_local(backend, device, case, rng):
    sk, tree = SKELETONS[case.skeleton], tree_of(SKELETONS[case.skeleton].parents)
    B, J, D = 3, sk.num_joints, 3
    bones = torch.randn(B, J - 1, D, dtype=case.dtype)
    root = torch.randn(B, 1, D, dtype=case.dtype)
    w = torch.randn(B, J, D, dtype=case.dtype)
    grad_affected = torch.zeros(B, J - 1, D, dtype=torch.bool)
    root_affected = torch.zeros(B, 1, D, dtype=torch.bool)
    for n, k, d in bad_entries(rng, B, J - 1, D):
        bones[n, k, d] = BAD[case.bad]
        # grad bone k' = -(sum of grad_x over the subtree below k'): bad where that subtree meets
        # the bad joints (the subtree below k), i.e. for k's ancestors, k and its descendants
        below = tree.subtree_joints[k]
        hit = set(tree.path_bones[tree.bone_child[k]]) | {tree.joint_bone[j] for j in below}
        grad_affected[n, sorted(hit), d] = True
        root_affected[n, 0, d] = True

    def grads(loss_of, be, dev):
        b, r = _leaf(bones, dev), _leaf(root, dev)
        x = fs.ops.kcs_inverse(b, sk, r, backend=be)
        return torch.autograd.grad(loss_of(x, w.to(dev)), (b, r))

    # a loss on the finite joints only: every gradient finite, as with finite input
    finite_loss = lambda x, w: (torch.where(torch.isfinite(x), x, 0) * w).sum()  # noqa: E731
    got, want = grads(finite_loss, backend, device), grads(finite_loss, "reference", REF_DEVICE)
    for g, r in zip(got, want):
        assert torch.isfinite(g).all()
        assert_like_reference(g, r, TOL[case.dtype])
    # a loss on every joint: non-finite gradients exactly where the bad joints reach
    all_loss = lambda x, w: (x * x * w).sum()  # noqa: E731
    got, want = grads(all_loss, backend, device), grads(all_loss, "reference", REF_DEVICE)
    assert torch.equal(~torch.isfinite(got[0].cpu()), grad_affected)
    assert torch.equal(~torch.isfinite(got[1].cpu()), root_affected)
    for g, r in zip(got, want):
        assert_like_reference(g, r, TOL[case.dtype])


# eps > 0 (the clamp max(length, eps), which must keep a NaN length) with NaN; the interpreter is slow
BONE_CASES = [(c, eps) for c in KCS_CASES for eps in (0.0, 0.3) if eps == 0.0 or c.bad == "nan"]


@pytest.mark.parametrize("case, eps", BONE_CASES, ids=[f"{c.id}-eps{eps}" for c, eps in BONE_CASES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_bone_decompose_bad_joint_reaches_its_bones_only(backend, device, case, eps, rng):
    sk, tree = SKELETONS[case.skeleton], tree_of(SKELETONS[case.skeleton].parents)
    B, J, D = 4, sk.num_joints, 3
    x = torch.randn(B, J, D, dtype=case.dtype)
    bad = x.clone()
    bones_hit = torch.zeros(B, J - 1, dtype=torch.bool)  # bones touching a bad joint
    coord = torch.zeros(B, J - 1, D, dtype=torch.bool)  # ... in the bad coordinate
    joints_hit = torch.zeros(B, J, dtype=torch.bool)  # the joints of those bones
    for n, j, d in bad_entries(rng, B, J, D):
        bad[n, j, d] = BAD[case.bad]
        ks = list(tree.child_bones[j]) + ([tree.joint_bone[j]] if j != tree.root else [])
        bones_hit[n, ks] = True
        coord[n, ks, d] = True
        ends = [tree.bone_child[k] if tree.bone_parent[k] == j else tree.bone_parent[k] for k in ks]
        joints_hit[n, [j] + ends] = True
    cot_u = torch.randn(B, J - 1, D, dtype=case.dtype)
    cot_l = torch.randn(B, J - 1, 1, dtype=case.dtype)

    def run(inp, be=backend, dev=device):
        leaf = _leaf(inp, dev)
        bones = fs.ops.kcs_forward(leaf, sk, backend=be)
        unit, length = fs.ops.bone_decompose(leaf, sk, eps, backend=be)
        (g,) = torch.autograd.grad((unit * cot_u.to(dev)).sum() + (length * cot_l.to(dev)).sum(), leaf)
        _, length2 = fs.ops.bone_decompose(leaf, sk, eps, backend=be)  # the backward without grad_unit
        (g_length,) = torch.autograd.grad((length2 * cot_l.to(dev)).sum(), leaf)
        return bones, unit, length, g, g_length

    got, clean, want = run(bad), run(x), run(bad, "reference", REF_DEVICE)
    bones, unit, length, g, g_length = (t.detach().cpu() for t in got)
    assert torch.equal(~torch.isfinite(bones), coord)  # x[parent] - x[child]: the bad coordinate
    length_hit = bones_hit.unsqueeze(-1)
    if case.bad == "nan":  # NaN length and NaN unit vector, gradient NaN on the bones' joints
        assert torch.equal(torch.isnan(length), length_hit) and torch.equal(~torch.isfinite(length), length_hit)
        assert torch.equal(torch.isnan(unit), length_hit.expand_as(unit)) and not torch.isinf(unit).any()
        for grad in (g, g_length):  # NaN in every coordinate of those joints
            assert torch.equal(torch.isnan(grad), joints_hit.unsqueeze(-1).expand_as(grad))
            assert not torch.isinf(grad).any()
    else:  # ||b|| = inf; unit = b / inf: NaN in the bad coordinate, 0 in the others
        assert torch.equal(torch.isposinf(length), length_hit) and torch.equal(~torch.isfinite(length), length_hit)
        assert torch.equal(torch.isnan(unit), coord) and not torch.isinf(unit).any()
        assert (unit[length_hit.expand_as(unit) & ~coord] == 0).all()
        assert torch.isfinite(g[~joints_hit]).all() and torch.isfinite(g_length[~joints_hit]).all()
    joints = joints_hit.unsqueeze(-1).expand_as(g)
    for out, c, r, affected in zip(got, clean, want, (coord, length_hit.expand_as(unit), length_hit, joints, joints)):
        assert_unaffected_exact(out, c, affected)
        assert_like_reference(out, r, TOL[case.dtype])


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_bone_decompose_double_backward(backend, device):
    """The kernel backends raise the documented error (the Triton route too, not autograd's
    once_differentiable error); the reference, which the message points to, computes it."""
    sk = fs.Skeleton([-1, 0, 1, 1, 3])
    x = torch.randn(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    unit, length = fs.ops.bone_decompose(x, sk, backend=backend)
    (g,) = torch.autograd.grad((unit.pow(3) * 2).sum() + length.sum(), x, create_graph=True)
    penalty = (g * torch.randn_like(g)).sum()  # (g.sum() is 0: the bones are translation invariant)
    if backend == "reference":
        (gg,) = torch.autograd.grad(penalty, x)
        assert torch.isfinite(gg).all() and gg.abs().sum() > 0
        return
    with pytest.raises(NotImplementedError, match=r"double backward through fastsmall\.ops\.bone_decompose is not "
                                                  r"implemented; use backend='reference' for higher-order gradients"):
        penalty.backward()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_linear_kcs_ops_double_backward(backend, device):
    """kcs_forward and kcs_inverse are linear: their double backward works on every backend."""
    sk = fs.Skeleton([-1, 0, 1, 1, 3])
    kw = dict(dtype=torch.float64, device=device, requires_grad=True)
    x, b, r = torch.randn(1, 5, 3, **kw), torch.randn(1, 4, 3, **kw), torch.randn(1, 1, 3, **kw)
    assert torch.autograd.gradgradcheck(lambda x: fs.ops.kcs_forward(x, sk, backend=backend), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda b, r: fs.ops.kcs_inverse(b, sk, r, backend=backend), (b, r),
                                        fast_mode=True)


# ---- part_kcs_gram --------------------------------------------------------------------------------------

# the random skeleton (overlapping parts) in float64 only: the interpreter is slow
GRAM_CASES = [(c, layout) for c in KCS_CASES for layout in ("masked", "compact")
              if c.skeleton == "h36m16" or c.dtype == torch.float64]
GRAM_IDS = [f"{c.id}-{layout}" for c, layout in GRAM_CASES]


def _gram_positions(sk, compact):
    """Where each masked-layout entry [P, NB, NB] lands in the op's output (flattened per pose)."""
    NB, P = sk.num_bones, len(sk.part_bones)
    if not compact:
        return torch.arange(P * NB * NB)
    return part_table(sk.part_bones, NB, True, "compact_positions", torch.device("cpu"), torch.int64)


@pytest.mark.parametrize("case, layout", GRAM_CASES, ids=GRAM_IDS)
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_part_kcs_gram_bad_bone_reaches_its_rows_only(backend, device, case, layout, rng):
    sk = SKELETONS[case.skeleton]
    B, NB, D, P = 4, sk.num_bones, 3, len(sk.part_bones)
    u = torch.randn(B, NB, D, dtype=case.dtype)
    bad = u.clone()
    hit = torch.zeros(B, P, NB, NB, dtype=torch.bool)  # masked layout
    grad_hit = torch.zeros(B, NB, D, dtype=torch.bool)
    for n, k, d in bad_entries(rng, B, NB, D):
        bad[n, k, d] = BAD[case.bad]
        for p, members in enumerate(sk.part_bones):
            if k in members:
                hit[n, p, k, list(members)] = hit[n, p, list(members), k] = True
                grad_hit[n, list(members), d] = True  # d<u_i, u_k> = u_k: bad in coordinate d
    positions = _gram_positions(sk, layout == "compact")
    hit = hit.flatten(1).index_select(1, positions)
    cot = torch.randn(B, positions.numel(), dtype=case.dtype)

    def run(inp, be=backend, dev=device):
        leaf = _leaf(inp, dev)
        out = fs.ops.part_kcs_gram(leaf, sk, layout, backend=be).flatten(1)  # [B, entries]
        (g,) = torch.autograd.grad(out, leaf, cot.to(dev))
        return out, g

    (out, g), clean, want = run(bad), run(u), run(bad, "reference", REF_DEVICE)
    assert torch.equal(~torch.isfinite(out.cpu()), hit)
    assert torch.equal(~torch.isfinite(g.cpu()), grad_hit)
    if layout == "masked":  # entries outside the parts: exactly 0, whatever the bones
        inside = torch.zeros(P, NB, NB, dtype=torch.bool)
        for p, members in enumerate(sk.part_bones):
            idx = torch.tensor(members)
            inside[p, idx[:, None], idx] = True
        assert (out.detach().cpu()[:, ~inside.flatten()] == 0).all()
    assert_unaffected_exact(out, clean[0], hit)
    assert_like_reference(out, want[0], TOL[case.dtype])
    assert_unaffected_exact(g, clean[1], grad_hit)
    # The gradient's non-finite positions equal the reference's, but with +-inf not always its NaN /
    # inf kind: the kernels take (G'_ik + G'_ki) u_k, one infinite term; the reference's autograd
    # G' u + G'^T u, two terms of either sign (inf - inf = NaN). Both are the same formula.
    assert_like_reference(g, want[1], TOL[case.dtype], kinds=(torch.isfinite,))


SELECT_CASES = [(c, layout) for c, layout in GRAM_CASES if c.bad == "nan"]  # each mixes NaN, +inf, -inf


@pytest.mark.parametrize("case, layout", SELECT_CASES, ids=[f"{c.skeleton}-{str(c.dtype)[6:]}-{layout}"
                                                            for c, layout in SELECT_CASES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_part_kcs_gram_selects_out_bones_outside_the_part(backend, device, case, layout, rng):
    """Bad values (NaN, +inf, -inf at random) in every bone outside part p leave G_p bit-identical:
    a select, not a multiply."""
    sk = SKELETONS[case.skeleton]
    B, NB, D = 3, sk.num_bones, 3
    p = rng.randrange(len(sk.part_bones))
    outside = [k for k in range(NB) if k not in sk.part_bones[p]]
    u = torch.randn(B, NB, D, dtype=case.dtype, device=device)
    bad = u.clone()
    bad[:, outside] = torch.tensor(list(BAD.values()), dtype=case.dtype, device=device)[
        torch.randint(0, 3, (B, len(outside), D), device=device)]
    # G_p's entries in the op's output
    NB2, n = NB * NB, len(sk.part_bones[p])
    if layout == "masked":
        own = slice(p * NB2, (p + 1) * NB2)
    else:
        start = sum(len(q) ** 2 for q in sk.part_bones[:p])
        own = slice(start, start + n * n)
    got = fs.ops.part_kcs_gram(bad, sk, layout, backend=backend).flatten(1)[:, own]
    assert torch.isfinite(got).all()
    assert torch.equal(got, fs.ops.part_kcs_gram(u, sk, layout, backend=backend).flatten(1)[:, own])
    # and its gradient: a loss on G_p alone gives the bones of p finite gradients
    leaf = bad.clone().requires_grad_()
    (g,) = torch.autograd.grad(fs.ops.part_kcs_gram(leaf, sk, layout, backend=backend).flatten(1)[:, own].sum(), leaf)
    members = list(sk.part_bones[p])
    shared = {k for q in sk.part_bones if set(q) & set(outside) for k in q}  # share a part with a bad bone
    clean_bones = [k for k in members if k not in shared]
    assert torch.isfinite(g[:, clean_bones]).all()


# ---- distribution_align / softmax_batch_mean --------------------------------------------------------------

ALIGN_KINDS = ["nan", "+inf", "all-inf", "one-inf"]  # what the bad rows get
ALIGN_CASES = [(kind, dtype, C) for kind in ALIGN_KINDS for dtype in DTYPES for C in (10, 200)]
ALIGN_TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-11)}


@pytest.mark.parametrize("kind, dtype, C", ALIGN_CASES, ids=[f"{k}-{str(d)[6:]}-C{c}" for k, d, c in ALIGN_CASES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_distribution_align_bad_rows(backend, device, kind, dtype, C, rng):
    B = 9
    z = torch.randn(B, C, dtype=dtype) * 3
    prior, running = torch.rand(C, dtype=dtype) + 0.1, torch.rand(C, dtype=dtype) + 0.1
    bad = z.clone()
    rows = sorted(rng.sample(range(B), 3))
    for i in rows:
        if kind == "all-inf":
            bad[i] = -INF
        else:
            bad[i, rng.randrange(C)] = {"nan": NAN, "+inf": INF, "one-inf": -INF}[kind]
    undefined = kind != "one-inf"  # the row's softmax is NaN (as torch.softmax)

    def run(logits, be=backend, dev=device):
        out = fs.ops.distribution_align(logits.to(dev), prior.to(dev), running.to(dev), temperature=0.7,
                                        threshold=0.0, backend=be)
        return (*out, fs.ops.softmax_batch_mean(logits.to(dev), backend=be))

    got, clean, want = run(bad), run(z), run(bad, "reference", REF_DEVICE)
    probs, label, mask, mean, mean2 = (t.cpu() for t in got)
    others = [i for i in range(B) if i not in rows]
    if undefined:  # NaN probs, label 0 (torch.argmax's first NaN), mask False, NaN batch mean
        assert torch.isnan(probs[rows]).all() and (label[rows] == 0).all() and not mask[rows].any()
        assert torch.isnan(mean).all() and torch.isnan(mean2).all()
    else:  # a -inf logit is probability exactly 0; everything finite
        assert torch.isfinite(probs).all() and (probs[bad == -INF] == 0).all() and mask.all()
        assert torch.isfinite(mean).all() and torch.isfinite(mean2).all()
    assert torch.isfinite(probs[others]).all() and mask[others].all()
    # rows are independent: the other rows are exactly what the clean batch gives
    assert torch.equal(probs[others], clean[0].cpu()[others])
    assert torch.equal(label[others], clean[1].cpu()[others])
    assert torch.equal(label, want[1]) and torch.equal(mask, want[2])
    for g, r, tol in ((probs, want[0], ALIGN_TOL[dtype]), (mean, want[3], ALIGN_TOL[dtype]),
                      (mean2, want[4], ALIGN_TOL[dtype])):
        assert_like_reference(g, r, tol)


# ---- ke_reinit_ / masked_mul_ (semantics unchanged here; kept bits are tested in test_ke_reinit.py) ----

@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d)[6:] for d in DTYPES])
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_mul_and_ke_reinit_non_kept_bad_values(backend, device, dtype):
    """masked_mul_ is W * keep (DSD's W.mul_(mask)): a non-kept NaN / inf becomes NaN (inf * 0),
    a kept one stays; ke_reinit_ selects, so non-kept bad values are replaced by finite draws."""
    w = torch.randn(6, 7, dtype=dtype, device=device)
    keep = torch.rand(6, 7, device=device) < 0.5
    every_third = w.view(-1)[::3]  # NaN, +inf, -inf, NaN, ...
    every_third.copy_(torch.tensor(list(BAD.values()), dtype=dtype).repeat(every_third.numel())[:every_third.numel()])
    for op in ("masked_mul_", "ke_reinit_"):
        got, want = w.clone(), w.clone().to(REF_DEVICE)
        kw = dict(seed=3) if op == "ke_reinit_" else {}
        getattr(fs.ops, op)([got], [keep], backend=backend, **kw)
        getattr(fs.ops, op)([want], [keep.to(REF_DEVICE)], backend="reference", **kw)
        torch.testing.assert_close(got[keep], w[keep], rtol=0, atol=0, equal_nan=True)  # kept: as they were
        if op == "masked_mul_":
            assert torch.equal(torch.isnan(got[~keep]), ~torch.isfinite(w[~keep]))
        else:
            assert torch.isfinite(got[~keep]).all()
        assert_like_reference(got, want, TOL[dtype])
