"""The distribution-alignment op family on every backend: values against the reference (CReST's
product form), ties, edge cases, no gradient through the targets, the masked cross-entropy and its
gradient, the registered ops (opcheck, fakes, torch.compile) and bad input.
"""
import os
import subprocess
import sys

import pytest
import torch

import fastsmall as fs
from fastsmall import _extension as ext
from conftest import DEVICE, ROOT, available_backends, device_for, op_registration_tests

BACKENDS = available_backends()
COMPILED = [b for b in BACKENDS if "reference" not in str(b)]  # backends with kernels
needs_ops = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")

# probabilities are in [0, 1]: absolute tolerances, plus one rounding of the output dtype
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-11),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
# how far from a tie / from the threshold a reference value must be for labels / masks to be compared
MARGIN = {torch.float32: 1e-5, torch.float64: 1e-11, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def inputs(B, C, dtype=torch.float32, device="cpu", scale=3.0):
    """Logits, a random prior (unnormalised) and a random running distribution."""
    logits = (torch.randn(B, C, dtype=torch.float64) * scale).to(dtype).to(device)
    prior = (torch.rand(C, dtype=torch.float64) + 0.05).to(device)
    running = torch.softmax(torch.randn(C, dtype=torch.float64), 0).to(device)
    return logits, prior, running


def assert_align_matches(out, logits, prior, running, temperature=1.0, threshold=0.95, eps=1e-6,
                         return_probs=True):
    ref = fs.reference.distribution_align(logits.cpu(), prior.cpu(), running.cpu(), temperature, threshold, eps)
    dtype = logits.dtype
    B, C = logits.shape
    probs, label, mask, mean = out
    assert (label.shape, label.dtype, mask.shape, mask.dtype) == ((B,), torch.int64, (B,), torch.bool)
    assert mean.shape == (C,) and mean.dtype == ref[3].dtype  # float32, or float64 for float64 logits
    assert label.device == mask.device == mean.device == logits.device
    if return_probs:
        assert probs.shape == (B, C) and probs.dtype == dtype and probs.device == logits.device
        torch.testing.assert_close(probs.cpu(), ref[0], **TOL[dtype])
    else:
        assert probs is None
    torch.testing.assert_close(mean.cpu(), ref[3], **TOL[torch.float64 if dtype == torch.float64 else torch.float32])
    # labels and masks where the reference is not within rounding of a tie / the threshold
    aligned = fs.reference.distribution_align(logits.cpu().to(ref[3].dtype), prior.cpu(), running.cpu(),
                                              temperature, threshold, eps)[0]
    if B:
        top2 = aligned.topk(min(2, C), dim=1).values
        clear = (top2[:, 0] - top2[:, -1] > MARGIN[dtype]) if C > 1 else torch.ones(B, dtype=torch.bool)
        assert torch.equal(label.cpu()[clear], ref[1][clear])
        far = (top2[:, 0] - threshold).abs() > MARGIN[dtype]
        assert torch.equal(mask.cpu()[far], ref[2][far])


# ---- distribution_align: values ----------------------------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, C", [(0, 4), (1, 1), (6, 1), (7, 3), (45, 10), (33, 37), (9, 130), (5, 1000)])
def test_matches_reference(backend, device, dtype, B, C):
    logits, prior, running = inputs(B, C, dtype, device)
    out = fs.ops.distribution_align(logits, prior, running, 0.5, 0.6, backend=backend)
    assert_align_matches(out, logits, prior, running, 0.5, 0.6)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.5, 0.1])
def test_temperatures(backend, device, temperature):
    """CReST+ anneals t from 1 to dalign_t in (0, 1]; prior^t / sum(prior^t) is the target."""
    logits, prior, running = inputs(40, 10, torch.float64, device)
    prior = torch.tensor([100, 60, 35, 20, 12, 7, 4, 2, 1, 1], dtype=torch.float64, device=device)  # long-tailed
    out = fs.ops.distribution_align(logits, prior, running, temperature, 0.5, backend=backend)
    assert_align_matches(out, logits, prior, running, temperature, 0.5)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(backend, device, dtype):
    logits, prior, running = inputs(37, 12, dtype, device, scale=2.0)
    out = fs.ops.distribution_align(logits, prior.float(), running.float(), 0.5, 0.5, backend=backend)
    assert out.batch_mean.dtype == torch.float32
    assert_align_matches(out, logits, prior.float(), running.float(), 0.5, 0.5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_ties_take_the_first_maximal_index(backend, device):
    """Exact ties (uniform prior and running make the alignment ratio exactly 1): torch.argmax's rule."""
    C = 7
    logits = torch.tensor([[0.0] * C,  # all equal -> 0
                           [1.0, 3.0, 3.0, 0.0, 3.0, -1.0, 2.0],  # 1, 2, 4 tie -> 1
                           [-5.0, -2.0, -9.0, -2.0, -2.0, -7.0, -3.0],  # 1, 3, 4 tie -> 1
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]], device=device)
    uniform = torch.full((C,), 1.0 / C, device=device)
    out = fs.ops.distribution_align(logits, torch.ones(C, device=device), uniform, backend=backend)
    assert out.pseudo_label.tolist() == [0, 1, 1, 6]
    # a wide row: ties at 500 and 900, the first wins
    wide = torch.randn(3, 1000, device=device) - 10
    wide[:, 900] = 5.0
    wide[:, 500] = 5.0
    uni = torch.full((1000,), 1e-3, device=device)
    assert fs.ops.distribution_align(wide, torch.ones(1000, device=device), uni, backend=backend).pseudo_label.tolist() == [500] * 3


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_ties_created_by_alignment(backend, device):
    """Different logits, equal aligned probabilities: ratio 2:1 against probabilities 1:2 (in float64)."""
    logits = torch.log(torch.tensor([[1.0, 2.0, 0.5], [2.0, 1.0, 0.5]], dtype=torch.float64, device=device))
    # target = (2/3, 1/3, 0) with eps = 0, running = (1/3, 1/3, 1/3): ratio = (2, 1, 0)
    prior = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64, device=device)
    running = torch.full((3,), 1.0 / 3, dtype=torch.float64, device=device)
    out = fs.ops.distribution_align(logits, prior, running, 1.0, 0.5, eps=0.0, backend=backend)
    assert out.pseudo_label.tolist() == [0, 0]
    torch.testing.assert_close(out.probs[0], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, device=device))


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_single_class(backend, device):
    logits = torch.randn(5, 1, device=device)
    out = fs.ops.distribution_align(logits, torch.ones(1, device=device), torch.ones(1, device=device), backend=backend)
    assert (out.probs == 1).all() and (out.pseudo_label == 0).all() and out.mask.all()
    torch.testing.assert_close(out.batch_mean, torch.ones(1, device=device))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_near_zero(backend, device, dtype):
    """A class the model never predicts (running ~ 0) is boosted by up to (target + eps) / eps."""
    logits, prior, running = inputs(24, 10, dtype, device)
    running = running.clone()
    running[[2, 7]] = torch.tensor([0.0, 1e-12], dtype=running.dtype, device=device)
    running = running / running.sum()
    out = fs.ops.distribution_align(logits, prior, running, 0.5, 0.5, backend=backend)
    assert_align_matches(out, logits, prior, running, 0.5, 0.5)
    assert (out.pseudo_label == 2).any() or (out.pseudo_label == 7).any()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_return_probs_false(backend, device):
    logits, prior, running = inputs(20, 6, torch.float32, device)
    full = fs.ops.distribution_align(logits, prior, running, 0.5, 0.4, backend=backend)
    lean = fs.ops.distribution_align(logits, prior, running, 0.5, 0.4, return_probs=False, backend=backend)
    assert lean.probs is None
    assert torch.equal(lean.pseudo_label, full.pseudo_label) and torch.equal(lean.mask, full.mask)
    assert torch.equal(lean.batch_mean, full.batch_mean)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_empty_batch(backend, device):
    """B = 0: empty outputs, batch mean zeros (documented), loss 0 with an empty gradient."""
    logits = torch.randn(0, 5, device=device, requires_grad=True)
    out = fs.ops.distribution_align(logits, torch.ones(5, device=device), torch.ones(5, device=device) / 5,
                                    backend=backend)
    assert out.probs.shape == (0, 5) and out.pseudo_label.shape == (0,) and out.mask.shape == (0,)
    assert torch.equal(out.batch_mean.cpu(), torch.zeros(5))
    assert torch.equal(fs.ops.softmax_batch_mean(logits, backend=backend).cpu(), torch.zeros(5))
    loss = fs.ops.masked_cross_entropy(logits, out.pseudo_label, out.mask, backend=backend)
    assert loss.shape == () and loss.item() == 0
    loss.backward()
    assert logits.grad.shape == (0, 5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_softmax_batch_mean(backend, device):
    logits, _, _ = inputs(70, 13, torch.float32, device)
    torch.testing.assert_close(fs.ops.softmax_batch_mean(logits, backend=backend).cpu(),
                               torch.softmax(logits.cpu().double(), -1).mean(0).float(), **TOL[torch.float32])


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_non_contiguous_logits(backend, device):
    base, prior, running = inputs(9, 20, torch.float32, device)
    logits = base.t().contiguous().t()[:, 3:14]  # column-major slice
    prior, running = prior[3:14], running[3:14]
    assert not logits.is_contiguous()
    out = fs.ops.distribution_align(logits, prior, running, 0.5, 0.3, backend=backend)
    assert_align_matches(out, logits, prior, running, 0.5, 0.3)


@needs_ops
def test_batch_mean_is_deterministic_across_thread_counts():
    """Row blocks depend on B and C only: the batch mean is bitwise the same for 1 and 2 threads."""
    logits, prior, running = inputs(20000, 10)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fs.ops.distribution_align(logits, prior, running, backend="cpp")
        torch.set_num_threads(2)
        two = fs.ops.distribution_align(logits, prior, running, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.batch_mean, two.batch_mean) and torch.equal(one.probs, two.probs)


_SIMD_SCRIPT = r"""
import torch, fastsmall as fs
torch.manual_seed(0)
for C in (1, 3, 10, 37, 130, 1000):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        B = 45
        z = (torch.randn(B, C, dtype=torch.float64) * 3).to(dtype)
        prior, running = torch.rand(C, dtype=torch.float64) + 0.05, torch.softmax(torch.randn(C, dtype=torch.float64), 0)
        out = fs.ops.distribution_align(z, prior, running, 0.5, 0.5, backend="cpp")
        ref = fs.reference.distribution_align(z, prior, running, 0.5, 0.5)
        tol = 1e-12 if dtype == torch.float64 else (2e-6 if dtype == torch.float32 else 1.6e-2)
        torch.testing.assert_close(out.probs.double(), ref[0].double(), atol=tol, rtol=tol)
        torch.testing.assert_close(out.batch_mean.double(), ref[3].double(), atol=max(tol, 2e-6), rtol=1e-5)
        y, m = torch.randint(0, C, (B,)), torch.rand(B) > 0.3
        zz, zr = z.detach().clone().requires_grad_(), z.detach().clone().requires_grad_()
        l, lr = fs.ops.masked_cross_entropy(zz, y, m, backend="cpp"), fs.reference.masked_cross_entropy(zr, y, m)
        torch.testing.assert_close(l.double(), lr.double(), atol=max(tol, 2e-6), rtol=1e-5)
        l.backward(); lr.backward()
        torch.testing.assert_close(zz.grad.double(), zr.grad.double(), atol=max(tol, 1e-7), rtol=1e-5)
print("ok")
"""


@needs_ops
@pytest.mark.parametrize("simd_bytes", [16, 32])
def test_cpu_kernels_on_narrower_instruction_sets(simd_bytes):
    """The SSE2 and AVX2 instantiations (this machine may pick AVX-512), capped by FASTSMALL_SIMD_BYTES."""
    env = dict(os.environ, FASTSMALL_SIMD_BYTES=str(simd_bytes))
    out = subprocess.run([sys.executable, "-c", _SIMD_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ---- no gradient through the pseudo-label path ---------------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
def test_no_gradient_through_distribution_align(backend, device):
    logits, prior, running = inputs(8, 5, torch.float64, device)
    logits.requires_grad_()
    prior.requires_grad_()
    out = fs.ops.distribution_align(logits, prior, running, 0.5, 0.3, backend=backend)
    assert not any(t.requires_grad for t in (out.probs, out.batch_mean))
    strong = torch.randn(8, 5, dtype=torch.float64, device=device, requires_grad=True)
    loss = fs.ops.masked_cross_entropy(strong, out.pseudo_label, out.mask, backend=backend) + out.probs.sum()
    loss.backward()
    assert logits.grad is None and prior.grad is None and strong.grad is not None


@needs_ops
def test_registered_op_outputs_are_non_differentiable():
    """Called directly on logits that require grad, torch.ops.fastsmall.distribution_align returns
    outputs without grad_fn (its autograd registration marks them non-differentiable)."""
    logits = torch.randn(6, 4, requires_grad=True)
    outs = torch.ops.fastsmall.distribution_align(logits, torch.ones(4), torch.ones(4) / 4, 1.0, 0.5, 1e-6, True)
    assert all(not o.requires_grad and o.grad_fn is None for o in outs)
    mean = torch.ops.fastsmall.softmax_batch_mean(logits)
    assert not mean.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        outs[0].sum().backward()


# ---- masked cross-entropy ----------------------------------------------------------------------------------

def ce_and_grad(logits, target, mask, backend, cot=1.0):
    x = logits.detach().clone().requires_grad_()
    loss = fs.ops.masked_cross_entropy(x, target, mask, backend=backend)
    (grad,) = torch.autograd.grad(loss * cot, x)
    return loss.detach(), grad


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B, C, mask_kind", [(1, 1, "bool"), (7, 3, "bool"), (45, 10, "float"), (33, 37, "bool"),
                                             (9, 130, "float"), (4, 1000, "bool")])
def test_masked_cross_entropy_matches_reference(backend, device, dtype, B, C, mask_kind):
    logits, _, _ = inputs(B, C, dtype, device)
    target = torch.randint(0, C, (B,), device=device)
    mask = torch.rand(B, device=device) > 0.4 if mask_kind == "bool" else torch.rand(B, device=device).to(dtype)
    loss, grad = ce_and_grad(logits, target, mask, backend, cot=1.7)
    ref_loss, ref_grad = ce_and_grad(logits.cpu(), target.cpu(), mask.cpu(), "reference", cot=1.7)
    assert loss.shape == () and loss.dtype == dtype
    torch.testing.assert_close(loss.cpu(), ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad.cpu(), ref_grad, **TOL[dtype])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("C", [10, 300])  # the C++ kernel's tile path (C <= 128) and row path
def test_masked_cross_entropy_keeps_relative_precision_on_confident_rows(backend, device, C):
    """Confident rows (target logit the max by 5 .. 50) have losses of 1e-2 .. 1e-21: each row's
    float32 loss and target gradient must be within a few ulp of the float64 truth, relatively.
    The plain log(sum exp) form loses them (max logit 77: 1.557e-5 for 1.467e-5), and p_y - 1
    rounds the target's gradient to 0 (in float64 too, below 1e-16: hence the truth below)."""
    dev = device_for(backend)
    B = 12
    z = torch.randn(B, C, dtype=torch.float64) * 3
    y = torch.randint(0, C, (B,))
    z[torch.arange(B), y] = z.amax(dim=1) + torch.linspace(5, 50, B, dtype=torch.float64)
    z = z.float().double()  # the float32 inputs, exactly
    # float64 truth: with z_y the max, CE = log1p(so) and dCE/dz_y = -so / (1 + so), so = sum_{j != y} e^(z_j - z_y)
    others = torch.ones_like(z, dtype=torch.bool)
    others[torch.arange(B), y] = False
    so = torch.where(others, torch.exp(z - z[torch.arange(B), y][:, None]), 0.0).sum(dim=1)
    want_loss, want_grad = torch.log1p(so), -so / (1 + so)
    for i in range(B):  # one row per call: the batch sum would hide the small rows
        for mask in (torch.ones(1, dtype=torch.bool), torch.full((1,), 0.75)):
            weight = float(mask.double())
            loss, grad = ce_and_grad(z[i:i + 1].float().to(dev), y[i:i + 1].to(dev), mask.to(dev), backend)
            assert abs(loss.double().cpu() - weight * want_loss[i]) <= 1e-5 * weight * want_loss[i], (i, mask)
            g = grad[0, y[i]].double().cpu()
            assert abs(g - weight * want_grad[i]) <= 1e-5 * weight * abs(want_grad[i]), (i, mask)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_cross_entropy_any_nonzero_bool_byte_is_weight_one(backend, device):
    dev = device_for(backend)
    logits, _, _ = inputs(37, 6, torch.float32, dev)
    target = torch.randint(0, 6, (37,), device=dev)
    raw = torch.randint(0, 256, (37,), dtype=torch.uint8)
    raw[:4] = torch.tensor([0, 2, 128, 255], dtype=torch.uint8)
    loss, grad = ce_and_grad(logits, target, raw.view(torch.bool).to(dev), backend)
    want_loss, want_grad = ce_and_grad(logits, target, (raw != 0).to(dev), backend)
    assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masked_cross_entropy_low_precision(backend, device, dtype):
    logits, _, _ = inputs(29, 11, dtype, device, scale=2.0)
    target = torch.randint(0, 11, (29,), device=device)
    mask = torch.rand(29, device=device) > 0.3
    loss, grad = ce_and_grad(logits, target, mask, backend)
    ref_loss, ref_grad = ce_and_grad(logits.cpu(), target.cpu(), mask.cpu(), "reference")
    assert loss.dtype == grad.dtype == dtype
    torch.testing.assert_close(loss.cpu(), ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad.cpu(), ref_grad, **TOL[dtype])


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the interpreter's inf * 0, discarded by a select
@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_rows_contribute_exact_zeros(backend, device):
    """Rows with mask 0 add exactly 0 and get exactly zero gradient, even with non-finite logits."""
    logits = torch.randn(4, 6, dtype=torch.float64, device=device)
    logits[1, 2] = float("inf")
    logits[3] = float("-inf")
    target = torch.tensor([0, 2, 5, 1], device=device)
    mask = torch.tensor([True, False, True, False], device=device)
    loss, grad = ce_and_grad(logits, target, mask, backend)
    keep = logits[[0, 2]]
    ref = torch.nn.functional.cross_entropy(keep, target[[0, 2]], reduction="sum") / 4
    torch.testing.assert_close(loss, ref)
    assert torch.isfinite(grad).all() and (grad[[1, 3]] == 0).all()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_cross_entropy_gradcheck(backend, device):
    interpreted = backend == "triton" and device == "cpu"
    logits = torch.randn(6, 7, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randint(0, 7, (6,), device=device)
    bool_mask = torch.tensor([True, False, True, True, False, True], device=device)
    weights = torch.rand(6, dtype=torch.float64, device=device)
    for mask in (bool_mask, weights):
        assert torch.autograd.gradcheck(lambda x: fs.ops.masked_cross_entropy(x, target, mask, backend=backend),
                                        (logits,), fast_mode=interpreted)


@needs_ops
def test_masked_cross_entropy_double_backward_raises():
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = fs.ops.masked_cross_entropy(logits, torch.tensor([0, 1, 3]), torch.ones(3, dtype=torch.bool), backend="cpp")
    (g,) = torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward through fastsmall.ops.masked_cross_entropy"):
        g.sum().backward()


# ---- the registered ops: opcheck, fakes, torch.compile ---------------------------------------------------

def _samples():
    out = []
    for B, C, dtype in [(5, 3, torch.float32), (0, 4, torch.float32), (7, 10, torch.float64), (3, 1, torch.float32),
                        (4, 130, torch.bfloat16)]:
        logits = torch.randn(B, C, dtype=dtype)
        prior, running = torch.rand(C) + 0.1, torch.softmax(torch.randn(C), 0).double()
        for return_probs in (True, False):
            out.append(("distribution_align", (logits.clone().requires_grad_(), prior, running, 0.5, 0.7, 1e-6,
                                               return_probs)))
        out.append(("softmax_batch_mean", (logits,)))
        target = torch.randint(0, C, (B,))
        mask = torch.rand(B) > 0.5
        out.append(("masked_cross_entropy", (logits.clone().requires_grad_(), target, mask)))
        out.append(("masked_cross_entropy", (logits.clone().requires_grad_(), target, torch.rand(B, dtype=dtype))))
        out.append(("masked_cross_entropy_backward", (torch.tensor(1.5, dtype=dtype), logits, target, mask)))
    out.append(("distribution_align", (torch.randn(12, 6).t(), torch.rand(12), torch.rand(12), 1.0, 0.9, 0.0, True)))
    return out


test_opcheck, test_fake_and_real_outputs_have_same_strides = op_registration_tests(_samples())


def _fixmatch_step(weak, strong, prior, running):
    """FixMatch's unlabelled loss with CReST+ alignment: pseudo-labels from the weak view."""
    out = fs.ops.distribution_align(weak, prior, running, 0.5, 0.4, return_probs=False)
    loss = fs.ops.masked_cross_entropy(strong, out.pseudo_label, out.mask)
    return loss * 2.0 + (weak.sin() * 0.01).sum(), out.batch_mean


@needs_ops
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_aot_eager(dynamic):
    prior, running = torch.tensor([6.0, 3, 2, 1, 1, 1]), torch.softmax(torch.randn(6), 0)
    torch._dynamo.reset()
    compiled = torch.compile(_fixmatch_step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for B in (12, 17):  # a second shape: recompiles (static) or reuses (dynamic)
        weak, strong = torch.randn(B, 6, requires_grad=True), torch.randn(B, 6, requires_grad=True)
        (loss, mean) = compiled(weak, strong, prior, running)
        got = torch.autograd.grad(loss, (weak, strong))
        (ref_loss, ref_mean) = _fixmatch_step(weak, strong, prior, running)
        want = torch.autograd.grad(ref_loss, (weak, strong))
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(mean, ref_mean)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        torch.testing.assert_close(got[0], (weak.cos() * 0.01).detach())  # only the sin term reaches weak


@needs_ops
def test_compile_fullgraph_inductor():
    prior, running = torch.tensor([6.0, 3, 2, 1, 1, 1]), torch.softmax(torch.randn(6), 0)
    weak, strong = torch.randn(10, 6, requires_grad=True), torch.randn(10, 6, requires_grad=True)
    torch._dynamo.reset()
    loss, mean = torch.compile(_fixmatch_step, fullgraph=True, backend="inductor")(weak, strong, prior, running)
    got = torch.autograd.grad(loss, (weak, strong))
    ref_loss, ref_mean = _fixmatch_step(weak, strong, prior, running)
    want = torch.autograd.grad(ref_loss, (weak, strong))
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(mean, ref_mean)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@needs_ops
def test_compiled_reference_is_traceable():
    """The benchmarks' torch.compile(reference) baselines compile without graph breaks."""
    logits, prior, running = inputs(9, 5)
    torch._dynamo.reset()
    f = torch.compile(fs.reference.distribution_align, fullgraph=True, backend="aot_eager")
    for a, b in zip(f(logits, prior, running, 0.5, 0.5), fs.reference.distribution_align(logits, prior, running, 0.5, 0.5)):
        torch.testing.assert_close(a, b)
    y, m = torch.randint(0, 5, (9,)), torch.rand(9) > 0.5
    g = torch.compile(fs.reference.masked_cross_entropy, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(g(logits, y, m), fs.reference.masked_cross_entropy(logits, y, m))


# ---- bad input: clear errors naming the argument ------------------------------------------------------------

Z, P, RUN = torch.randn(4, 5), torch.ones(5), torch.ones(5) / 5
Y, M = torch.tensor([0, 1, 2, 3]), torch.tensor([True, False, True, True])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("call, error, message", [
    (lambda b: fs.ops.distribution_align(torch.randn(4, 5, 2), P, RUN, backend=b), ValueError, r"logits must have shape \[B, C\]"),
    (lambda b: fs.ops.distribution_align(torch.randn(4, 0), P[:0], RUN[:0], backend=b), ValueError, r"logits must have at least one class"),
    (lambda b: fs.ops.distribution_align(torch.randint(0, 3, (4, 5)), P, RUN, backend=b), TypeError, "logits must be a floating-point tensor"),
    (lambda b: fs.ops.distribution_align([[0.0] * 5], P, RUN, backend=b), TypeError, "logits must be a torch.Tensor"),
    (lambda b: fs.ops.distribution_align(Z, torch.ones(6), RUN, backend=b), ValueError, r"prior must have shape \[C\] = \[5\]"),
    (lambda b: fs.ops.distribution_align(Z, P, torch.ones(1, 5), backend=b), ValueError, r"running must have shape \[C\] = \[5\]"),
    (lambda b: fs.ops.distribution_align(Z, torch.ones(5, dtype=torch.int64), RUN, backend=b), TypeError, "prior must be a floating-point tensor"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, temperature=0.0, backend=b), ValueError, "temperature must be a float > 0, got 0.0"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, temperature=-0.5, backend=b), ValueError, "temperature must be a float > 0"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, temperature=float("inf"), backend=b), ValueError, "temperature must be a float > 0"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, threshold=1.5, backend=b), ValueError, r"threshold must be a float in \[0, 1\], got 1.5"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, threshold=-0.1, backend=b), ValueError, r"threshold must be a float in \[0, 1\]"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, eps=-1e-6, backend=b), ValueError, "eps must be a float >= 0"),
    (lambda b: fs.ops.distribution_align(Z, P, RUN, backend=b + "x"), ValueError, "backend must be one of"),
    (lambda b: fs.ops.softmax_batch_mean(torch.randn(5), backend=b), ValueError, r"logits must have shape \[B, C\]"),
    (lambda b: fs.ops.masked_cross_entropy(Z, Y.int(), M, backend=b), TypeError, "target must be an int64 tensor of class indices"),
    (lambda b: fs.ops.masked_cross_entropy(Z, Y[:3], M, backend=b), ValueError, r"target must have shape \[B\] = \[4\]"),
    (lambda b: fs.ops.masked_cross_entropy(Z, Y, M[:, None], backend=b), ValueError, r"mask must have shape \[B\] = \[4\]"),
    (lambda b: fs.ops.masked_cross_entropy(Z, Y, M.long(), backend=b), TypeError, "mask must be a bool or floating-point tensor"),
    (lambda b: fs.ops.masked_cross_entropy(Z.double(), Y, [1, 0, 1, 1], backend=b), TypeError, "mask must be a torch.Tensor"),
])
def test_wrapper_errors(backend, device, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def test_tensors_on_different_devices():
    meta = torch.ones(5, device="meta")
    with pytest.raises(ValueError, match="running is on meta but logits is on cpu"):
        fs.ops.distribution_align(Z, P, meta)
    with pytest.raises(ValueError, match="mask is on meta but logits is on cpu"):
        fs.ops.masked_cross_entropy(Z, Y, M.to("meta"))
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors, but logits is on meta"):
        fs.ops.distribution_align(Z.to("meta"), meta, meta, backend="cpp")


@pytest.mark.parametrize("backend, device", available_backends())
def test_out_of_range_target_raises_on_every_backend(backend, device):
    """The same error on every backend (the Triton launcher pays one device sync for it rather
    than returning a NaN loss), forward and backward, for targets above C and below 0."""
    dev = device_for(backend)
    for bad in (torch.tensor([0, 5, 1, 1]), torch.tensor([0, -1, 1, 1])):
        x = Z.to(dev).requires_grad_()
        with pytest.raises(RuntimeError, match=r"target has class indices outside \[0, C\) = \[0, 5\)"):
            fs.ops.masked_cross_entropy(x, bad.to(dev), M.to(dev), backend=backend)
    if backend == "reference":
        return
    if backend == "triton":
        from fastsmall.kernels.distribution_align import masked_cross_entropy_backward
    else:
        masked_cross_entropy_backward = torch.ops.fastsmall.masked_cross_entropy_backward
    with pytest.raises(RuntimeError, match=r"target has class indices outside"):
        masked_cross_entropy_backward(torch.tensor(1.0, device=dev), Z.to(dev), torch.tensor([0, -1, 1, 1], device=dev),
                                      M.to(dev))


@needs_ops
@pytest.mark.parametrize("call, message", [
    (lambda: torch.ops.fastsmall.distribution_align(torch.randn(4), P, RUN, 1.0, 0.5, 1e-6, True), r"logits must have shape \[B, C\]"),
    (lambda: torch.ops.fastsmall.distribution_align(Z.int(), P, RUN, 1.0, 0.5, 1e-6, True), "logits must be a floating-point tensor"),
    (lambda: torch.ops.fastsmall.distribution_align(Z, torch.ones(3), RUN, 1.0, 0.5, 1e-6, True), r"prior must have shape \[C\] = \[5\]"),
    (lambda: torch.ops.fastsmall.distribution_align(Z, P, torch.ones(5, dtype=torch.int32), 1.0, 0.5, 1e-6, True), "running must be a floating-point tensor"),
    (lambda: torch.ops.fastsmall.distribution_align(Z, P, RUN, 0.0, 0.5, 1e-6, True), "temperature must be > 0"),
    (lambda: torch.ops.fastsmall.distribution_align(Z, P, RUN, 1.0, 2.0, 1e-6, True), r"threshold must be in \[0, 1\]"),
    (lambda: torch.ops.fastsmall.distribution_align(Z, P, RUN, 1.0, 0.5, -1.0, True), "eps must be >= 0"),
    (lambda: torch.ops.fastsmall.softmax_batch_mean(torch.randn(3, 0)), "at least one class"),
    (lambda: torch.ops.fastsmall.masked_cross_entropy(Z, Y.float(), M), "target must be an int64 tensor"),
    (lambda: torch.ops.fastsmall.masked_cross_entropy(Z, Y, M[:2]), r"mask must have shape \[B\] = \[4\]"),
    (lambda: torch.ops.fastsmall.masked_cross_entropy(Z, Y, M.int()), "mask must be a bool or floating-point tensor"),
    (lambda: torch.ops.fastsmall.masked_cross_entropy_backward(torch.ones(2), Z, Y, M), r"grad must be a scalar \(0-dim\) tensor"),
])
def test_cpp_kernel_errors(call, message):
    """Callers of torch.ops.fastsmall.* that skip the wrappers still get errors, never a crash."""
    with pytest.raises(RuntimeError, match=message):
        call()
