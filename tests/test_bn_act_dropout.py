"""The MLP-block op family (``bn_act_dropout``: ``residual + dropout(leaky_relu(batch_norm(y)))``) on
every backend against the reference: values and statistics, gradients (float64 gradcheck too), the
dropout mask bit for bit and its keep rate, the public wrapper against nn.BatchNorm1d (running
statistics, eval mode, BatchNorm1d + ReLU / LeakyReLU), odd / empty / non-contiguous / low-precision
input, the registered ops (opcheck, fakes, torch.compile, double backward) and bad input.
"""
import copy
import math

import pytest
import torch
from torch import nn

import fastsmall as fs
from fastsmall import _extension as ext
from fastsmall import masks as km
from fastsmall.ops.bn_act_dropout import _MLP
from fastsmall.reference.bn_act_dropout import dropout_key
from conftest import available_backends, device_for, op_registration_tests

BACKENDS = available_backends()
COMPILED = [b for b in BACKENDS if "reference" not in str(b)]  # backends with kernels
needs_ops = pytest.mark.skipif(ext.C is None or not hasattr(torch.ops.fastsmall, "bn_act_dropout"),
                               reason=f"C++ op fastsmall::bn_act_dropout unavailable: {ext.CPP_ERROR}")

# normwise: |got - want| <= tol * (scale + |want|), scale the magnitude of the compared terms
TOL = {torch.float32: 2e-5, torch.float64: 1e-11, torch.float16: 4e-3, torch.bfloat16: 3e-2}
EPS = 1e-5


def run(backend, *args):
    """The op ``bn_act_dropout`` (op-level signature) on ``backend``'s route, differentiable."""
    return _MLP.route("bn_act_dropout", backend, args[0], "y")(*args)


def inputs(N, C, dtype=torch.float32, device="cpu", weight=True, bias=True, residual=True, mode="batch",
           slope=0.2, p=0.25, param_dtype=None):
    """Op-level arguments: y, weight, bias, mean, var, residual, seed, eps, negative_slope, p."""
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    pd = param_dtype or cd
    y = (torch.randn(N, C, dtype=torch.float64) * 1.5 + 0.5).to(dtype).to(device)
    w = torch.randn(C, dtype=pd, device=device) if weight else None
    b = (torch.randn(C, dtype=torch.float64) * 0.5).to(pd).to(device) if bias else None
    mean = var = None
    if mode == "eval":
        mean = (torch.randn(C, dtype=torch.float64) * 0.5 + 0.5).to(cd).to(device)
        var = (torch.rand(C, dtype=torch.float64) * 2 + 0.5).to(cd).to(device)
    res = torch.randn(N, C, dtype=torch.float64).to(dtype).to(device) if residual else None
    seed = torch.randint(-2 ** 62, 2 ** 62, (1,), dtype=torch.int64, device=device)
    return [y, w, b, mean, var, res, seed, EPS, slope, p]


def assert_near(got, want, dtype, scale=1.0):
    tol = TOL[dtype]
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    scale = max(scale, want.abs().max().item() if want.numel() else 0.0, 1.0) if want.dtype.is_floating_point else 0
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=tol * scale, rtol=tol, equal_nan=True)


def grads_of(backend, args, cot):
    """(out, mean, var) and the gradients of <out, cot> w.r.t. y, weight, bias, residual (None where not given)."""
    args = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and i in (0, 1, 2, 5) else a
            for i, a in enumerate(args)]
    out, mean, var = run(backend, *args)
    assert not mean.requires_grad and not var.requires_grad
    leaves = [args[i] for i in (0, 1, 2, 5) if args[i] is not None]
    gs = iter(torch.autograd.grad(out, leaves, cot.to(out.device)) if out.numel() else [torch.zeros_like(t)
                                                                                        for t in leaves])
    return (out.detach(), mean, var), [next(gs) if args[i] is not None else None for i in (0, 1, 2, 5)]


def check(backend, args, dtype=None):
    """Values, statistics and the four gradients of ``backend`` against the reference (on the CPU)."""
    dtype = dtype or args[0].dtype
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    cot = torch.randn(args[0].shape, dtype=torch.float64).to(args[0].dtype)
    got, got_g = grads_of(backend, args, cot)
    ref_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    want, want_g = grads_of("reference", ref_args, cot)
    assert got[0].dtype == dtype and got[0].is_contiguous() and got[1].dtype == got[2].dtype == cd
    for g, w in zip(got, want):
        assert_near(g, w, dtype)
    # gradient terms are ~ |cot| * |weight| / std * (1 / (1 - p)): the normwise scale of the comparison
    w, p = args[1], args[9]
    invstd = torch.rsqrt(want[2].double() + EPS)
    scale = (cot.abs().max().double() * invstd.max() * (w.abs().max().double() if w is not None else 1.0)
             / (1 - p if p < 1 else 1)).item() if cot.numel() and invstd.numel() else 1.0
    for name, g, r in zip(("y", "weight", "bias", "residual"), got_g, want_g):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == r.dtype, name
        n = max(args[0].shape[0], 1) if name in ("weight", "bias") else 1
        assert_near(g, r, dtype if name in ("y", "residual") else cd, scale * n)
    return got, got_g


# ---- values and gradients against the reference ---------------------------------------------------

AFFINE = [  # weight, bias, residual, negative_slope
    (True, True, True, 0.2),
    (False, False, False, 0.0),
    (True, False, True, 0.0),
    (False, True, False, 0.2),
]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "eval"])
@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("affine", AFFINE, ids=["w-b-res-leaky", "plain-relu", "w-res-relu", "b-leaky"])
def test_matches_reference(backend, device, mode, p, affine):
    w, b, r, slope = affine
    args = inputs(37, 19, device=device, weight=w, bias=b, residual=r, mode=mode, slope=slope, p=p)
    (out, mean, var), _ = check(backend, args)
    if mode == "eval":  # the given statistics, as fresh tensors
        assert torch.equal(mean, args[3]) and torch.equal(var, args[4])
        assert mean.data_ptr() != args[3].data_ptr() and var.data_ptr() != args[4].data_ptr()
    else:
        y = args[0].double()
        torch.testing.assert_close(mean.double(), y.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(var.double(), y.var(0, unbiased=False), atol=1e-5, rtol=1e-5)
    if p == 1:  # everything dropped: the residual, exactly
        assert torch.equal(out, args[5] if r else torch.zeros_like(out))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("N, C, dtype, mode", [(2, 1, torch.float32, "batch"), (3, 1000, torch.float32, "batch"),
                                                (7, 17, torch.float64, "eval"), (300, 5, torch.float32, "batch"),
                                                (64, 33, torch.float64, "batch"), (5, 130, torch.float32, "eval"),
                                                (1, 3, torch.float64, "batch")])
def test_odd_shapes(backend, device, N, C, dtype, mode):
    """C = 1, wide rows, C not a multiple of 8 / 16, several row splits (N = 300), one row (the op itself
    allows it: var 0)."""
    check(backend, inputs(N, C, dtype, device=device, mode=mode, p=0.25))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "eval"])
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_gradcheck(backend, device, mode, p):
    """float64 gradcheck of y, weight, bias, residual (p > 0 too: the mask is a fixed function of the seed)."""
    interpreted = backend == "triton" and device == "cpu"
    y, w, b, mean, var, res, seed, eps, slope, p = inputs(6, 3, torch.float64, device, mode=mode, slope=0.2, p=p)
    leaves = [t.requires_grad_() for t in (y, w, b, res)]

    def f(y, w, b, res):
        return run(backend, y, w, b, mean, var, res, seed, eps, slope, p)[0]

    assert torch.autograd.gradcheck(f, leaves, fast_mode=interpreted)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_batch_statistics_of_offset_data(backend, device):
    """A large common offset (1e4, spread 1e-1) in float32: the variance is not E[y^2] - E[y]^2
    (which loses every digit here) but within float32 rounding of the float64 truth."""
    y64 = 1e4 + torch.randn(200, 6, dtype=torch.float64) * torch.logspace(-1, 1, 6, dtype=torch.float64)
    y = y64.float()
    _, mean, var = run(backend, y.to(device), None, None, None, None, None, torch.tensor([0], device=device),
                       EPS, 0.0, 0.0)
    x = y.double()
    torch.testing.assert_close(mean.cpu().double(), x.mean(0), atol=0, rtol=1e-6)
    torch.testing.assert_close(var.cpu().double(), x.var(0, unbiased=False), atol=0, rtol=2e-4)


@pytest.mark.parametrize("backend, device", COMPILED)
def test_deterministic(backend, device):
    """Two calls give the same bits: reductions in a fixed order, no atomics (several row splits here)."""
    args = inputs(200, 9, device=device, p=0.3)
    cot = torch.randn(200, 9)
    a, ga = grads_of(backend, args, cot)
    b, gb = grads_of(backend, args, cot)
    assert all(torch.equal(x, z) for x, z in zip(a, b)) and all(torch.equal(x, z) for x, z in zip(ga, gb))


# ---- the dropout mask ------------------------------------------------------------------------------

def keep_mask_of(backend, shape, seed, p, device):
    """The keep mask a backend applies: identity activation of constant positive z, so out != 0 iff kept;
    and the eval-mode gradient (w / std * g_z): exactly 0 where dropped."""
    N, C = shape
    y = torch.ones(N, C, device=device, requires_grad=True)
    mean, var = torch.zeros(C, device=device), torch.ones(C, device=device)
    out = run(backend, y, None, None, mean, var, None, seed, EPS, 1.0, p)[0]
    (g,) = torch.autograd.grad(out, y, torch.ones_like(out))
    keep = out.detach() != 0
    assert torch.equal(keep, g != 0)
    if p < 1:  # kept: z / (1 - p)
        torch.testing.assert_close(out[keep], torch.full_like(out[keep], (1 + EPS) ** -0.5 / (1 - p)))
    return keep.cpu()


SEEDS = [0, -1, 2 ** 40 + 3, -(2 ** 62) + 5, 2 ** 63 - 1]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("p", [0.25, 0.7, 1.0])
def test_dropout_mask_is_the_reference_mask(backend, device, p):
    shape = (33, 21)
    for s in SEEDS:
        seed = torch.tensor([s], dtype=torch.int64)
        want = fs.reference.dropout_keep_mask(seed, shape, p)
        assert torch.equal(keep_mask_of(backend, shape, seed.to(device), p, device), want), s


def test_reference_mask_follows_the_documented_rng():
    """dropout_keep_mask is masks.py's stream [TAG_DROPOUT, lo32(seed), hi32(seed)], element e = n * C + c,
    kept iff its 23-bit draw k >= dropout_threshold(p), i.e. iff u = (2k + 1) / 2^24 >= p."""
    for s in SEEDS:
        k0, k1 = km.stream_key(km.TAG_DROPOUT, *km.split64(s))
        assert tuple(int(v) for v in dropout_key(torch.tensor([s]))) == (k0, k1)
        mask = fs.reference.dropout_keep_mask(torch.tensor([s]), (7, 9), 0.4).flatten().tolist()
        for e in range(63):
            k = km.mix32(km.mix32((e & km.M32) ^ k0) ^ ((k1 + (e >> 32)) & km.M32)) >> 9
            assert mask[e] == ((2 * k + 1) / 2 ** 24 >= 0.4) == (k >= km.dropout_threshold(0.4))
    assert km.dropout_threshold(0.0) == 0 and km.dropout_threshold(1.0) == 2 ** 23


def test_reference_keep_rate_on_a_large_tensor():
    n = 1 << 19
    for p in (0.1, 0.5, 0.9):
        keep = fs.reference.dropout_keep_mask(torch.tensor([12345]), (512, 1024), p)
        rate = keep.double().mean().item()
        assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n), (p, rate)
        # no stripes: per-column rates within 6 sigma of 1 - p
        cols = keep.double().mean(0)
        assert (cols - (1 - p)).abs().max() < 6 * math.sqrt(p * (1 - p) / 512)
    # another seed gives an independent mask: agreement (1 - p)^2 + p^2
    a = fs.reference.dropout_keep_mask(torch.tensor([1]), (512, 1024), 0.5)
    b = fs.reference.dropout_keep_mask(torch.tensor([2]), (512, 1024), 0.5)
    assert abs((a == b).double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate(backend, device, p):
    shape = (64, 256)
    n = shape[0] * shape[1]
    keep = keep_mask_of(backend, shape, torch.tensor([7], device=device), p, device)
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_dropped_nan_is_zero(backend, device):
    """Dropout is a select: a dropped NaN gives exactly 0 (nn.Dropout would give NaN * 0), a kept one NaN."""
    y = torch.full((9, 6), float("nan"), device=device)
    seed = torch.tensor([3], device=device)
    out = run(backend, y, None, None, torch.zeros(6, device=device), torch.ones(6, device=device), None, seed,
              EPS, 0.0, 0.5)[0].cpu()
    keep = fs.reference.dropout_keep_mask(seed.cpu(), (9, 6), 0.5)
    assert torch.equal(out.isnan(), keep) and (out[~keep] == 0).all()


# ---- special input: empty, non-contiguous, low precision -----------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "eval"])
def test_empty(backend, device, mode):
    """N = 0: empty output, batch statistics zeros, zero parameter gradients; C = 0: empty everything."""
    args = inputs(0, 5, device=device, mode=mode)
    (out, mean, var), (gy, gw, gb, gr) = check(backend, args)
    assert out.shape == (0, 5) and gy.shape == (0, 5) and gr.shape == (0, 5)
    if mode == "batch":
        assert torch.equal(mean.cpu(), torch.zeros(5)) and torch.equal(var.cpu(), torch.zeros(5))
    assert torch.equal(gw.cpu(), torch.zeros(5)) and torch.equal(gb.cpu(), torch.zeros(5))
    (out, mean, var), (gy, gw, gb, gr) = check(backend, inputs(4, 0, device=device, mode=mode))
    assert out.shape == (4, 0) and mean.shape == var.shape == (0,) and gw.shape == (0,)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_non_contiguous(backend, device):
    base = inputs(11, 8, device=device, p=0.25)
    args = list(base)
    args[0] = base[0].t().contiguous().t()  # column-major y
    args[5] = torch.randn(8, 11, device=device).t()  # transposed residual
    args[1] = torch.randn(16, device=device)[::2]  # strided weight
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    got, _ = check(backend, args)
    contiguous = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    # the same mask (element n * C + c of the logical y), the same values up to the order of the sums
    assert_near(run(backend, *contiguous)[0], got[0], torch.float32)
    eval_args = inputs(6, 10, dtype=torch.float64, device=device, mode="eval")
    eval_args[0] = torch.randn(10, 6, dtype=torch.float64, device=device).t()
    eval_args[3] = torch.randn(20, dtype=torch.float64, device=device)[1::2]  # strided mean
    check(backend, eval_args)


@pytest.mark.parametrize("backend, device", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["batch", "eval"])
def test_low_precision_computed_in_float32(backend, device, dtype, mode):
    """float16/bfloat16 y (and residual), float32 or own-dtype parameters: computed in float32, the
    statistics float32, the output and grad_y in y's dtype, each parameter's gradient in its dtype."""
    for param_dtype in (torch.float32, dtype):
        check(backend, inputs(29, 12, dtype, device, mode=mode, p=0.25, param_dtype=param_dtype))


# ---- the public wrapper ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_wrapper_running_stats_like_batchnorm1d(backend, device, momentum):
    """training=True, p=0: BatchNorm1d's output and running statistics (unbiased variance, momentum);
    training=False: the running statistics normalise, and dropout does not act."""
    C = 10
    bn = nn.BatchNorm1d(C, momentum=momentum).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    for step in range(3):
        y = torch.randn(16, C, device=device) * (step + 1) + step
        out = fs.ops.bn_act_dropout(y, rm, rv, bn.weight, bn.bias, True, momentum, bn.eps, backend=backend)
        torch.testing.assert_close(out, torch.relu(bn(y)), atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(rm, bn.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(rv, bn.running_var, atol=1e-6, rtol=1e-6)
    bn.eval()
    y = torch.randn(7, C, device=device)
    out = fs.ops.bn_act_dropout(y, rm, rv, bn.weight, bn.bias, False, momentum, bn.eps, p=0.5, backend=backend)
    torch.testing.assert_close(out, torch.relu(bn(y)), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(rm, bn.running_mean, atol=1e-6, rtol=1e-6)  # eval: not updated


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_wrapper_equals_batchnorm1d_and_relu(backend, device, slope):
    """p = 0: nn.Sequential(BatchNorm1d, ReLU / LeakyReLU) in training mode, values and gradients (float64)."""
    C = 9
    torch_block = nn.Sequential(nn.BatchNorm1d(C), nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)).double()
    bn = torch_block[0]
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    w = bn.weight.detach().clone().to(device).requires_grad_()
    b = bn.bias.detach().clone().to(device).requires_grad_()
    rm, rv = bn.running_mean.clone().to(device), bn.running_var.clone().to(device)
    y = torch.randn(12, C, dtype=torch.float64, requires_grad=True)
    yd = y.detach().to(device).requires_grad_()
    out = fs.ops.bn_act_dropout(yd, rm, rv, w, b, True, negative_slope=slope, backend=backend)
    want = torch_block(y)
    torch.testing.assert_close(out.cpu(), want.detach(), atol=1e-12, rtol=1e-11)
    cot = torch.randn(12, C, dtype=torch.float64)
    got_g = torch.autograd.grad(out, (yd, w, b), cot.to(device))
    want_g = torch.autograd.grad(want, (y, bn.weight, bn.bias), cot)
    for g, r in zip(got_g, want_g):
        torch.testing.assert_close(g.cpu(), r, atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(rm.cpu(), bn.running_mean, atol=1e-14, rtol=1e-13)
    torch.testing.assert_close(rv.cpu(), bn.running_var, atol=1e-14, rtol=1e-13)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_wrapper_dropout_and_seed(backend, device):
    """Training with p > 0: the op's mask (dropout_keep_mask of the seed); seed=None draws from torch's
    generator (torch.manual_seed fixes it); no dropout without training; the residual is added last."""
    y = torch.randn(20, 6, device=device)
    res = torch.randn(20, 6, device=device)
    seed = torch.tensor([99], device=device)
    out = fs.ops.bn_act_dropout(y, training=True, p=0.4, seed=seed, residual=res, backend=backend)
    full = fs.ops.bn_act_dropout(y, training=True, p=0.0, backend=backend)
    keep = fs.reference.dropout_keep_mask(seed.cpu(), (20, 6), 0.4).to(device)
    torch.testing.assert_close(out, torch.where(keep, full / 0.6, 0.0) + res, atol=1e-5, rtol=1e-5)
    torch.manual_seed(5)
    a = fs.ops.bn_act_dropout(y, training=True, p=0.4, backend=backend)
    torch.manual_seed(5)
    b = fs.ops.bn_act_dropout(y, training=True, p=0.4, backend=backend)
    c = fs.ops.bn_act_dropout(y, training=True, p=0.4, backend=backend)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(fs.ops.bn_act_dropout(y, training=False, p=0.4, backend=backend), full)
    s = fs.ops.bn_act_dropout_seed(device)
    assert s.dtype == torch.int64 and s.shape == (1,) and s.device.type == torch.device(device).type


# ---- the registered ops: opcheck, fakes, torch.compile, double backward ------------------------------

def _samples():
    seed = torch.tensor([17])
    out = []
    for N, C, dtype, mode, p in [(6, 4, torch.float32, "batch", 0.25), (5, 3, torch.float64, "eval", 0.5),
                                 (0, 4, torch.float32, "batch", 0.0), (7, 5, torch.bfloat16, "eval", 1.0)]:
        args = inputs(N, C, dtype, mode=mode, p=p)
        args[6] = seed
        args[0] = args[0].requires_grad_()
        out.append(("bn_act_dropout", tuple(args)))
        y, w, b = args[0].detach(), args[1], args[2]
        if mode == "eval":
            mean, var = args[3], args[4]
        else:
            x = y.double() if dtype == torch.float64 else y.float()
            mean = x.mean(0) if N else x.new_zeros(C)
            var = ((x - mean) ** 2).mean(0) if N else x.new_zeros(C)
        out.append(("bn_act_dropout_backward", (torch.randn(N, C).to(dtype), y, w, b, mean, var, seed,
                                                mode == "batch", EPS, 0.2, p)))
    t = inputs(4, 6, mode="batch", weight=False, bias=False, residual=False)
    t[0] = torch.randn(6, 4).t()
    t[6] = seed
    out.append(("bn_act_dropout", tuple(t)))
    return out


test_opcheck, test_fake_and_real_outputs_have_same_strides = op_registration_tests(_samples())


def _mlp_tail(y, rm, rv, w, b, res, seed):
    out = fs.ops.bn_act_dropout(y, rm, rv, w, b, True, 0.1, 1e-5, negative_slope=0.2, p=0.25, residual=res,
                                seed=seed)
    return (out * out).sum()


@needs_ops
def test_compile_fullgraph_with_backward():
    torch._dynamo.reset()
    compiled = torch.compile(_mlp_tail, fullgraph=True, backend="aot_eager")
    args = [torch.randn(16, 8), torch.zeros(8), torch.ones(8), torch.randn(8), torch.randn(8), torch.randn(16, 8),
            torch.tensor([4])]
    mine = [a.clone().requires_grad_() if i in (0, 3, 4, 5) else a.clone() for i, a in enumerate(args)]
    eager = [a.clone().requires_grad_() if i in (0, 3, 4, 5) else a.clone() for i, a in enumerate(args)]
    got, want = compiled(*mine), _mlp_tail(*eager)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    for i in (0, 3, 4, 5):
        torch.testing.assert_close(mine[i].grad, eager[i].grad)
    for i in (1, 2):  # the running statistics were updated in place, as in eager
        torch.testing.assert_close(mine[i], eager[i])
        assert not torch.equal(mine[i], args[i])
    # seed=None: drawn inside the graph (torch.randint), no graph break
    torch._dynamo.reset()
    drawn = torch.compile(lambda y: fs.ops.bn_act_dropout(y, training=True, p=0.5).sum(), fullgraph=True,
                          backend="aot_eager")
    assert torch.isfinite(drawn(torch.randn(8, 4)))


@pytest.mark.parametrize("backend, device", COMPILED)
def test_double_backward_is_a_clear_error(backend, device):
    args = inputs(5, 3, torch.float64, device, p=0.25)
    y = args[0].requires_grad_()
    out = run(backend, *args)[0]
    (g,) = torch.autograd.grad((out * out).sum(), y, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward through fastsmall.ops.bn_act_dropout"):
        g.sum().backward()
    # the reference supports it
    ref_args = [a.detach().cpu().requires_grad_() if i == 0 else (a.cpu() if isinstance(a, torch.Tensor) else a)
                for i, a in enumerate(args)]
    (g,) = torch.autograd.grad((run("reference", *ref_args)[0] ** 2).sum(), ref_args[0], create_graph=True)
    g.sum().backward()


@needs_ops
def test_registered_op_statistics_are_not_differentiable():
    y = torch.randn(6, 4, requires_grad=True)
    out, mean, var = torch.ops.fastsmall.bn_act_dropout(y, None, None, None, None, None, torch.tensor([1]),
                                                        EPS, 0.0, 0.5)
    assert out.requires_grad and not mean.requires_grad and not var.requires_grad


# ---- bad input: a ValueError / TypeError naming the argument, on every backend ----------------------

def _bad(i, v):
    def edit(args):
        args[i] = v(args) if callable(v) else v
        return args
    return edit


BAD = [  # (edit of the op arguments, exception, message)
    (_bad(0, lambda a: a[0][None]), ValueError, r"y must have shape \[N, C\]"),
    (_bad(0, lambda a: a[0][0]), ValueError, r"y must have shape \[N, C\]"),
    (_bad(0, lambda a: a[0].to(torch.int64)), TypeError, "y must be a floating-point tensor"),
    (_bad(1, lambda a: torch.ones(5)), ValueError, r"weight must have shape \[4\]"),
    (_bad(1, lambda a: torch.ones(4, 1)), ValueError, r"weight must have shape \[4\]"),
    (_bad(1, lambda a: torch.ones(4, dtype=torch.int32)), TypeError, "weight must be a floating-point tensor"),
    (_bad(2, lambda a: torch.ones(3)), ValueError, r"bias must have shape \[4\]"),
    (_bad(3, lambda a: torch.zeros(4)), ValueError, "mean and var must be given together"),
    (_bad(4, lambda a: torch.ones(4)), ValueError, "mean and var must be given together"),
    (lambda a: _bad(4, torch.ones(4))(_bad(3, torch.zeros(5))(a)), ValueError, r"mean must have shape \[4\]"),
    (_bad(5, lambda a: torch.ones(6, 5)), ValueError, "residual must have y's shape"),
    (_bad(5, lambda a: torch.ones(6, 4, dtype=torch.float64)), TypeError, "residual has dtype torch.float64"),
    (_bad(6, lambda a: torch.tensor([1], dtype=torch.int32)), ValueError, "seed must be an int64 tensor"),
    (_bad(6, lambda a: torch.tensor([1, 2])), ValueError, "seed must be an int64 tensor"),
    (_bad(6, 7), TypeError, "seed must be an int64 tensor"),
    (_bad(9, -0.1), ValueError, r"p \(the dropout probability\) must be a float in \[0, 1\]"),
    (_bad(9, 1.5), ValueError, r"p \(the dropout probability\) must be a float in \[0, 1\]"),
    (_bad(9, float("nan")), ValueError, r"p \(the dropout probability\) must be a float in \[0, 1\]"),
    (_bad(7, 0.0), ValueError, "eps must be a finite float > 0"),
    (_bad(7, -1e-5), ValueError, "eps must be a finite float > 0"),
    (_bad(7, float("inf")), ValueError, "eps must be a finite float > 0"),
    (_bad(8, float("nan")), ValueError, "negative_slope must be a finite float"),
]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("edit, exc, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input(backend, device, edit, exc, message):
    args = edit(inputs(6, 4, p=0.25))
    args = [a.to(device_for(backend)) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(exc, match=message):
        run(backend, *args)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_wrapper_bad_input(backend, device):
    y = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        fs.ops.bn_act_dropout(y[:1], training=True, backend=backend)
    with pytest.raises(ValueError, match=r"p \(the dropout probability\)"):
        fs.ops.bn_act_dropout(y, training=True, p=2.0, backend=backend)
    with pytest.raises(ValueError, match=r"y must have shape \[N, C\]"):
        fs.ops.bn_act_dropout(y[None], backend=backend)
    with pytest.raises(ValueError, match=r"weight must have shape \[4\]"):
        fs.ops.bn_act_dropout(y, weight=torch.ones(3, device=device), training=True, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        fs.ops.bn_act_dropout(y, backend="cuda")


def test_wrapper_running_statistics_arguments_are_checked():
    y = torch.randn(4, 3)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        fs.ops.bn_act_dropout(y, torch.zeros(3), None, training=False)
    with pytest.raises(ValueError, match="momentum"):
        fs.ops.bn_act_dropout(y, torch.zeros(3), torch.ones(3), training=True, momentum=None)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_sequential_fuses_every_bn_act_run_and_keeps_the_modules(momentum):
    # Linear -> BN -> LeakyReLU, nested Sequential with Linear -> BN -> ReLU -> Dropout(0): the fused run
    # equals the modules one by one (values, gradients, running statistics, num_batches_tracked)
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=momentum), nn.LeakyReLU(0.2),
                        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8, momentum=momentum), nn.ReLU(),
                                      nn.Dropout(0.0)),
                        nn.Linear(8, 5)).double()
    twin = copy.deepcopy(seq)
    x = torch.randn(7, 6, dtype=torch.float64)
    r = torch.randn(7, 5, dtype=torch.float64)
    for _ in range(2):
        a = fs.ops.bn_act_dropout_sequential(seq, x, r)
        b = r + twin(x)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.sum(), list(seq.parameters()))
        gb = torch.autograd.grad(b.sum(), list(twin.parameters()))
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)
    for (k, u), (_, v) in zip(seq.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(u, v, msg=k)
    seq.eval(), twin.eval()
    torch.testing.assert_close(fs.ops.bn_act_dropout_sequential(seq, x), twin(x))


_SIMD_SCRIPT = r"""
import sys, torch, fastsmall as fs
torch.manual_seed(0)
outs = []
for N, C in ((300, 70), (64, 1024), (5, 3)):
    y = torch.randn(N, C, requires_grad=True)
    w, b = torch.randn(C, requires_grad=True), torch.randn(C, requires_grad=True)
    rm, rv = torch.zeros(C), torch.ones(C)
    out = fs.ops.bn_act_dropout(y, rm, rv, w, b, True, p=0.3, negative_slope=0.2, residual=torch.randn(N, C),
                                seed=torch.tensor([123]), backend="cpp")
    outs += [out.detach(), *torch.autograd.grad(out, (y, w, b), torch.randn_like(out)), rm, rv]
torch.save(outs, sys.argv[1])
"""


@needs_ops
def test_cpu_kernel_gives_the_same_bits_on_every_instruction_set(tmp_path):
    """FASTSMALL_SIMD_BYTES caps the instruction set (16: SSE2, 32: AVX2, 64: AVX-512 where the CPU has it):
    without FMA contraction every instantiation computes the same bits, forward, backward and running
    statistics."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    results = []
    for simd in (16, 32, 64):
        path = tmp_path / f"bits_{simd}.pt"
        env = dict(os.environ, FASTSMALL_SIMD_BYTES=str(simd))
        out = subprocess.run([sys.executable, "-c", _SIMD_SCRIPT, str(path)], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(torch.load(path, weights_only=True))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


# ---- the CPU kernel's two splits (row split for few columns: BatchNorm2d's channels-last view) ----

SPLIT_CASES = [  # N, C, dtype, mode, p: rows not a multiple of the 64-row chunk, partial 32-column blocks
    (30720, 32, torch.float32, "batch", 0.0), (1000, 37, torch.float32, "batch", 0.3),
    (7681, 64, torch.bfloat16, "batch", 0.2), (130, 5, torch.float64, "batch", 0.5),
    (3, 70, torch.float32, "eval", 0.25), (200, 33, torch.float32, "eval", 0.0),
]


@needs_ops
@pytest.mark.parametrize("N, C, dtype, mode, p", SPLIT_CASES)
def test_row_and_column_splits_give_the_same_bits(monkeypatch, N, C, dtype, mode, p):
    """The row split (partial sums per 64-row chunk, combined in chunk order) and the column split
    (a block of columns per task) compute the same bits, on one thread and on two: forward,
    statistics, backward and the parameters' gradients. FASTSMALL_BN_ACT_SPLIT forces each."""
    torch.manual_seed(N + C)
    args = inputs(N, C, dtype=dtype, mode=mode, p=p)
    cot = torch.randn(N, C, dtype=torch.float64).to(dtype)
    results = {}
    threads = torch.get_num_threads()
    try:
        for split in ("rows", "columns"):
            monkeypatch.setenv("FASTSMALL_BN_ACT_SPLIT", split)
            for t in (1, 2):
                torch.set_num_threads(t)
                out, mean, var = torch.ops.fastsmall.bn_act_dropout(*args)
                grads = torch.ops.fastsmall.bn_act_dropout_backward(
                    cot, args[0], args[1], args[2], mean, var, args[6], mode == "batch", EPS, args[8], p)
                results[split, t] = [out, mean, var, *grads]
    finally:
        torch.set_num_threads(threads)
    want = results["columns", 1]
    for key, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, want)), key
    assert_near(want[0], run("reference", *args)[0].detach(), dtype, scale=3.0)  # and they are right


@needs_ops
def test_split_override_is_read_and_checked(monkeypatch):
    """The override the bit test relies on reaches the kernel: a value that is not a split is an error."""
    monkeypatch.setenv("FASTSMALL_BN_ACT_SPLIT", "diagonal")
    with pytest.raises(RuntimeError, match="FASTSMALL_BN_ACT_SPLIT must be rows, columns or auto"):
        torch.ops.fastsmall.bn_act_dropout(*inputs(8, 3, p=0.0))


# ---- BatchNorm2d on channels-last maps ------------------------------------------------------------

def _bn2d_pair(C, momentum, affine=True, track=True):
    torch.manual_seed(C)
    bn = nn.BatchNorm2d(C, momentum=momentum, affine=affine, track_running_stats=track).double()
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.randn(C, dtype=torch.float64))
            bn.bias.copy_(torch.randn(C, dtype=torch.float64))
    return bn, copy.deepcopy(bn)


@needs_ops
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("channels_last", [True, False])
def test_layer_on_a_feature_map_equals_batchnorm2d_and_relu(momentum, slope, channels_last):
    """``bn_act_dropout_layer(x, BatchNorm2d)`` on [N, C, H, W] is ``act(bn(x))``: outputs, gradients
    of x / weight / bias, running statistics and num_batches_tracked over three training steps,
    then eval mode; fused on channels-last maps (its [N*H*W, C] view), the modules' ops otherwise."""
    N, C, H, W = 6, 5, 3, 4
    fused_bn, module_bn = _bn2d_pair(C, momentum)
    act = nn.LeakyReLU(slope) if slope else nn.ReLU()
    for step in range(4):
        fused_bn.train(step < 3)
        module_bn.train(step < 3)
        x = torch.randn(N, C, H, W, dtype=torch.float64) * 2 + 0.3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = fs.ops.bn_act_dropout_layer(xa, fused_bn, negative_slope=slope)
        want = act(module_bn(xb))
        assert got.shape == want.shape
        assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        cot = torch.randn_like(want)
        ga = torch.autograd.grad(got, [xa, *fused_bn.parameters()], cot)
        gb = torch.autograd.grad(want, [xb, *module_bn.parameters()], cot)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
        for a, b in zip(fused_bn.buffers(), module_bn.buffers()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@needs_ops
def test_layer_on_a_feature_map_with_residual_and_dropout_is_one_fused_call():
    """With dropout and a residual on a channels-last map: the op's mask on the [N*H*W, C] view,
    the residual added after it, and the result a channels-last [N, C, H, W] map."""
    N, C, H, W = 4, 3, 2, 5
    bn, _ = _bn2d_pair(C, 0.1)
    x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last)
    r = torch.randn(N, C, H, W)  # contiguous: taken to channels-last
    bn = bn.float()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    torch.manual_seed(3)
    out = fs.ops.bn_act_dropout_layer(x, bn, nn.Dropout(0.4), residual=r)
    torch.manual_seed(3)  # the same seed draw as the layer's (bn_act_dropout_seed)
    rows = x.permute(0, 2, 3, 1).reshape(-1, C)
    want = fs.ops.bn_act_dropout(rows, rm, rv, bn.weight, bn.bias, True, 0.1, bn.eps, p=0.4,
                                 residual=r.permute(0, 2, 3, 1).reshape(-1, C))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, C), want, rtol=0, atol=0)


def test_layer_rejects_a_batchnorm_of_the_wrong_rank():
    with pytest.raises(ValueError, match="BatchNorm2d does not take a 2-d input"):
        fs.ops.bn_act_dropout_layer(torch.randn(4, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="BatchNorm1d does not take a 4-d input"):
        fs.ops.bn_act_dropout_layer(torch.randn(4, 3, 2, 2), nn.BatchNorm1d(3))
