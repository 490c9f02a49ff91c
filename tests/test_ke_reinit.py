"""fastsmall.ops.ke_reinit_ / masked_mul_ on every backend, the KE / DSD mask helpers,
and the ops as registered torch ops (opcheck, torch.compile)."""
import math

import pytest
import torch
from scipy import stats
from torch import nn

import fastsmall as fs
from conftest import available_backends
from fastsmall import _extension as ext
from fastsmall import masks as km
from fastsmall.methods import dsd, ke
from fastsmall.methods.dsd.official import official_masked_mul_
from fastsmall.methods.ke.official import official_ke_reinit_
from fastsmall.methods.models import resnet18
from fastsmall.ops import KELS, WELS

BACKENDS = available_backends()
INITS = ["torch_default", "kaiming_normal", "zero"]
needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")


def fastest_backend():
    return "cpp" if ext.C is not None else "reference"


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (NaN payloads and signed zeros included)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def layer_list(device, dtype=torch.float32):
    """Small weights of varied shapes with one mask of every kind (small: the interpreter is slow)."""
    ts = [torch.randn(16, 8, 3, 3), torch.randn(10, 37), torch.randn(9, 5, 2), torch.randn(24, 12, 1, 1),
          torch.randn(0, 4, 3), torch.randn(6, 700)]
    ms = [KELS(8, 3), WELS(0.5, 11), torch.rand(9, 5, 2) > 0.4, KELS(24, 5), KELS(0, 0), WELS(0.3, -7)]
    return [t.to(device=device, dtype=dtype) for t in ts], [m.to(device) if isinstance(m, torch.Tensor) else m
                                                            for m in ms]


def run(op, tensors, masks, backend, **kw):
    out = [t.clone() for t in tensors]
    if op == "ke_reinit_":
        fs.ops.ke_reinit_(out, masks, backend=backend, **kw)
    else:
        fs.ops.masked_mul_(out, masks, backend=backend)
    return out


# ---- every backend gives the reference's bits -----------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ke_reinit_bit_identical_to_reference(backend, device, init, dtype):
    ts, ms = layer_list(device, dtype)
    got = run("ke_reinit_", ts, ms, backend, seed=1234, generation=3, init=init)
    want = run("ke_reinit_", [t.cpu() for t in ts], [m.cpu() if isinstance(m, torch.Tensor) else m for m in ms],
               "reference", seed=1234, generation=3, init=init)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.device == ts[0].device
        assert torch.equal(bits(g.cpu()), bits(w))


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_mul_bit_identical_to_reference_and_foreach_mul(backend, device):
    ts, ms = layer_list(device, torch.float32)
    got = run("masked_mul_", ts, ms, backend)
    dense = [fs.reference.ke_keep_mask(t.shape, m, t.device) for t, m in zip(ts, ms)]
    want = [t.clone() for t in ts]
    torch._foreach_mul_(want, dense)  # DSD's W.mul_(mask), as one foreach call
    for g, w in zip(got, want):
        assert torch.equal(bits(g), bits(w))  # including the sign of the zeros


@pytest.mark.parametrize("backend, device", [b for b in BACKENDS if "reference" not in str(b)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_mixed_dtypes(backend, device, dtype):
    ts = [torch.randn(12, 6, 3, device=device, dtype=dtype), torch.randn(8, 20, device=device),
          torch.randn(5, 7, device=device, dtype=dtype)]
    ms = [KELS(6, 2), WELS(0.5, 1), torch.rand(5, 7, device=device) > 0.5]
    for init in ("torch_default", "kaiming_normal"):
        got = run("ke_reinit_", ts, ms, backend, seed=5, generation=1, init=init)
        want = run("ke_reinit_", [t.cpu() for t in ts], [m.cpu() if isinstance(m, torch.Tensor) else m for m in ms],
                   "reference", seed=5, generation=1, init=init)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and torch.equal(bits(g.cpu()), bits(w))
    got = run("masked_mul_", ts, ms, backend)
    want = run("masked_mul_", [t.cpu() for t in ts], [m.cpu() if isinstance(m, torch.Tensor) else m for m in ms],
               "reference")
    for g, w in zip(got, want):
        assert torch.equal(bits(g.cpu()), bits(w))


# ---- kept elements are bit-exact, the rest is redrawn ---------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")  # the interpreter's inf * 0, wanted
@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", ["ke_reinit_", "masked_mul_"])
def test_kept_elements_bit_exact(backend, device, op):
    ts, ms = layer_list(device)
    for t in ts:  # values an arithmetic blend m*W + (1-m)*R would change: NaN payloads, -0.0, inf
        flat = t.view(-1)
        if flat.numel():
            flat[::7] = float("nan")
            flat[1::7] = -0.0
            flat[2::7] = float("inf")
            bits(flat)[3::7] = 0x7FC00123  # a NaN with a payload
    before = [t.clone() for t in ts]
    after = run(op, ts, ms, backend, **(dict(seed=0, generation=1) if op == "ke_reinit_" else {}))
    for b, a, m in zip(before, after, ms):
        keep = fs.reference.ke_keep_mask(b.shape, m, b.device)
        assert torch.equal(bits(a)[keep], bits(b)[keep])
        if op == "ke_reinit_" and (~keep).any():
            assert torch.isfinite(a[~keep]).all()
            assert (bits(a)[~keep] != bits(b)[~keep]).float().mean() > 0.99


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("op", ["ke_reinit_", "masked_mul_"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_any_nonzero_bool_byte_is_true(backend, device, op, dtype):
    """A bool tensor made with .view(torch.bool) can hold any byte; every nonzero byte means kept,
    on every backend: the same bits as the 0/1 mask (not a bit blend of both values, not w * 2)."""
    raw = torch.randint(0, 256, (7, 37), dtype=torch.uint8)
    raw[0, :8] = torch.tensor([0, 1, 2, 3, 127, 128, 254, 255], dtype=torch.uint8)
    odd = raw.view(torch.bool).to(device)
    clean = (raw != 0).to(device)
    w = torch.randn(7, 37, dtype=dtype, device=device)
    kw = {"seed": 5, "generation": 1} if op == "ke_reinit_" else {}
    got = run(op, [w], [odd], backend, **kw)[0]
    want = run(op, [w], [clean], backend, **kw)[0]
    assert torch.equal(bits(got), bits(want))
    kept = clean.cpu()
    assert torch.equal(bits(got.cpu())[kept], bits(w.cpu())[kept])
    assert (raw != 0).any() and (raw == 0).any()  # both kinds of element present


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_only_the_masked_region_changes_and_kels_region_is_exact(backend, device):
    w = torch.randn(20, 10, 3, device=device)
    out = run("ke_reinit_", [w], [KELS(7, 4)], backend, seed=9)[0]
    assert torch.equal(out[:7, :4], w[:7, :4])
    assert (out[7:] != w[7:]).all() and (out[:7, 4:] != w[:7, 4:]).all()
    # the redrawn block equals the draws of the whole tensor at those positions
    r = fs.reference.ke_draws(w.shape, "torch_default", 9, 0, 0, device=w.device)
    assert torch.equal(out[7:], r[7:]) and torch.equal(out[:7, 4:], r[:7, 4:])


# ---- distribution of the draws -----------------------------------------------------------------

@pytest.mark.parametrize("shape", [(512, 256, 3, 3), (1000, 300)])
def test_torch_default_is_uniform_bound_1_over_sqrt_fan_in(shape):
    w = torch.zeros(shape)
    fs.ops.ke_reinit_([w], [KELS(0, 0)], seed=7, backend=fastest_backend())
    b = 1 / math.sqrt(km.fan_in(shape))
    x = w.flatten().double()
    assert x.abs().max() < b and x.abs().max() > b * (1 - 1e-4)
    n = x.numel()
    assert abs(x.mean()) < 4 * b / math.sqrt(3 * n)
    assert abs(x.var() / (b * b / 3) - 1) < 0.01
    sample = x[:: max(1, n // 200_000)].numpy()
    assert stats.kstest(sample, stats.uniform(loc=-b, scale=2 * b).cdf).pvalue > 1e-3
    # matches nn.Conv2d / nn.Linear's own reset_parameters bound
    layer = nn.Conv2d(shape[1], shape[0], shape[2]) if len(shape) == 4 else nn.Linear(shape[1], shape[0])
    assert layer.weight.abs().max() < b and layer.weight.abs().max() > 0.99 * b


@pytest.mark.parametrize("shape", [(512, 256, 3, 3), (1000, 300)])
def test_kaiming_normal_is_normal_std_sqrt_2_over_fan_in(shape):
    w = torch.zeros(shape)
    fs.ops.ke_reinit_([w], [KELS(0, 0)], seed=7, generation=2, init="kaiming_normal", backend=fastest_backend())
    std = math.sqrt(2 / km.fan_in(shape))
    z = (w.flatten().double() / std)
    n = z.numel()
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 6 * math.sqrt(2 / n)
    assert abs(stats.skew(z.numpy())) < 6 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z.numpy())) < 6 * math.sqrt(24 / n)
    sample = z[:: max(1, n // 200_000)].numpy()
    assert stats.kstest(sample, "norm").pvalue > 1e-3
    assert z.abs().max() < 5.8  # Box-Muller with u >= 2^-24: |z| <= sqrt(-2 ln 2^-24)


def test_draws_are_uncorrelated_across_tensors_generations_and_neighbours():
    shape = (200, 500)
    base = fs.reference.ke_draws(shape, "kaiming_normal", 3, 0, 0).flatten().double()
    for other in [fs.reference.ke_draws(shape, "kaiming_normal", 3, 0, 1),  # next tensor
                  fs.reference.ke_draws(shape, "kaiming_normal", 3, 1, 0),  # next generation
                  fs.reference.ke_draws(shape, "kaiming_normal", 4, 0, 0)]:  # next seed
        assert abs(torch.corrcoef(torch.stack([base, other.flatten().double()]))[0, 1]) < 0.01
    assert abs(torch.corrcoef(torch.stack([base[:-1], base[1:]]))[0, 1]) < 0.01
    # the two Box-Muller streams are independent: the uniforms themselves
    a0, a1, b0, b1 = km.reinit_keys(3, 0, 0)
    ua = fs.reference.ke_uniform_bits(100_000, (a0, a1)).double()
    ub = fs.reference.ke_uniform_bits(100_000, (b0, b1)).double()
    assert abs(torch.corrcoef(torch.stack([ua, ub]))[0, 1]) < 0.015
    assert stats.kstest((ua.numpy() * 2 + 1) / 2 ** 24, "uniform").pvalue > 1e-3


# ---- determinism, seeds and generations ---------------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
def test_same_seed_same_result_and_changes_give_new_draws(backend, device):
    ts, ms = layer_list(device)
    a = run("ke_reinit_", ts, ms, backend, seed=42, generation=5, init="kaiming_normal")
    b = run("ke_reinit_", ts, ms, backend, seed=42, generation=5, init="kaiming_normal")
    for x, y in zip(a, b):
        assert torch.equal(bits(x), bits(y))
    for kw in (dict(seed=43, generation=5), dict(seed=42, generation=6), dict(seed=-42, generation=5),
               dict(seed=42 + 2 ** 40, generation=5)):
        c = run("ke_reinit_", ts, ms, backend, init="kaiming_normal", **kw)
        for x, y, t, m in zip(a, c, ts, ms):
            redrawn = ~fs.reference.ke_keep_mask(t.shape, m, t.device)
            if redrawn.any():
                assert (x[redrawn] != y[redrawn]).float().mean() > 0.99, kw


def test_wels_mask_fixed_across_generations_and_list_positions():
    w = torch.randn(64, 32, 3, 3)
    other = torch.randn(10, 10)
    mask = WELS(0.5, 2021)
    keep = fs.reference.ke_keep_mask(w.shape, mask)
    assert abs(keep.float().mean().item() - 0.5) < 0.01
    g1 = run("ke_reinit_", [w], [mask], fastest_backend(), seed=0, generation=1)[0]
    g2 = run("ke_reinit_", [other, w], [KELS(1), mask], fastest_backend(), seed=0, generation=2)[1]
    assert torch.equal(g1[keep], w[keep]) and torch.equal(g2[keep], w[keep])
    assert (g1[~keep] != w[~keep]).all() and (g2[~keep] != g1[~keep]).all()
    # masked_mul_ zeroes exactly the elements ke_reinit_ redraws
    z = run("masked_mul_", [w], [mask], fastest_backend())[0]
    assert torch.equal(z == 0, ~keep)
    assert fs.reference.ke_keep_mask(w.shape, WELS(0.0, 1)).sum() == 0
    assert fs.reference.ke_keep_mask(w.shape, WELS(1.0, 1)).all()
    assert not torch.equal(keep, fs.reference.ke_keep_mask(w.shape, WELS(0.5, 2022)))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_wels_rate(rate):
    keep = fs.reference.ke_keep_mask((400, 500), WELS(rate, 3))
    n = keep.numel()
    assert abs(keep.float().mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)


def test_rng_spec_matches_plain_python():
    """The tensor implementation of the hash is the integer spec of fastsmall/masks.py."""
    key = km.wels_key(77)
    got = fs.reference.ke_uniform_bits(5000, key).tolist()
    for e in range(0, 5000, 37):
        h = km.mix32((e & km.M32) ^ key[0])
        assert got[e] == km.mix32(h ^ ((key[1] + (e >> 32)) & km.M32)) >> 9
    assert km.wels_threshold(0.5) == 2 ** 22 and km.wels_threshold(1.0) == 2 ** 23 and km.wels_threshold(0.0) == 0


# ---- lists: empty, zero-size tensors, parameters --------------------------------------------------

@pytest.mark.parametrize("backend, device", BACKENDS)
def test_empty_list_and_zero_size_tensors(backend, device):
    assert fs.ops.ke_reinit_([], [], seed=0, backend=backend) is None
    assert fs.ops.masked_mul_([], [], backend=backend) is None
    ts = [torch.empty(0, 5, device=device), torch.empty(3, 0, 2, device=device), torch.randn(4, 3, device=device)]
    ms = [KELS(0, 0), torch.ones(3, 0, 2, dtype=torch.bool, device=device), KELS(2)]
    out = run("ke_reinit_", ts, ms, backend, seed=1)
    assert out[0].shape == (0, 5) and out[1].shape == (3, 0, 2)
    assert torch.equal(out[2][:2], ts[2][:2]) and (out[2][2:] != ts[2][2:]).all()
    run("masked_mul_", ts, ms, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_parameters_updated_in_place_without_autograd_complaints(backend, device):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    ws = [model[0].weight, model[2].weight]
    before = [w.detach().clone() for w in ws]
    versions = [w._version for w in ws]
    fs.ops.ke_reinit_(ws, [KELS(4, 3), WELS(0.5, 1)], seed=3, generation=1, backend=backend)
    fs.ops.masked_mul_(ws, [KELS(4, 3), WELS(0.5, 1)], backend=backend)
    assert all(isinstance(w, nn.Parameter) and w.requires_grad and w.grad_fn is None for w in ws)
    assert not torch.equal(ws[0], before[0])
    assert all(w._version > v for w, v in zip(ws, versions))  # version counters bumped, as in-place ops do
    model(torch.randn(2, 6, device=device)).sum().backward()  # still trains


@needs_cpp
def test_op_bumps_versions_so_autograd_sees_the_overwrite():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(3, 3)
    loss = (x @ w).sum()  # w is saved for backward
    fs.ops.ke_reinit_([w], [KELS(1)], seed=0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@needs_cpp
def test_no_allocation_proportional_to_the_model():
    ws = [torch.randn(256, 256, 3, 3) for _ in range(4)]
    ms = [KELS(128, 128), WELS(0.5, 1), torch.rand(256, 256, 3, 3) > 0.5, KELS(256, 10)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fs.ops.ke_reinit_(ws, ms, seed=0, generation=1, init="kaiming_normal")
        fs.ops.masked_mul_(ws, ms)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    assert allocated < 64 * 1024, f"{allocated} bytes allocated for a {4 * ws[0].numel() * 4}-byte model"


# ---- KE masks on a ResNet-18 -------------------------------------------------------------------

def test_kels_split_of_resnet18_matches_official_counts():
    model = resnet18(num_classes=100)
    masks = ke.split_masks(model, 0.5, mode="kels")
    params = dict(model.named_parameters())
    conv_linear = {n for n, p in params.items() if n.endswith("weight") and p.dim() > 1}
    assert set(masks) == conv_linear  # every conv/linear weight, no bias, no BatchNorm
    assert list(masks)[0] == "conv1.weight" and list(masks)[-1] == "fc.weight"

    def kept(name):
        return fs.reference.ke_keep_mask(params[name].shape, masks[name])

    assert masks["conv1.weight"] == KELS(32, 3) and kept("conv1.weight").sum() == 32 * 3 * 7 * 7
    for name in ("layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv1.weight", "layer1.1.conv2.weight"):
        assert masks[name] == KELS(32, 32) and kept(name).sum() == 32 * 32 * 3 * 3
    assert masks["layer2.0.conv1.weight"] == KELS(64, 32)
    assert masks["layer2.0.downsample.0.weight"] == KELS(64, 32)
    assert masks["layer4.1.conv2.weight"] == KELS(256, 256)
    assert masks["fc.weight"] == KELS(100, 256)
    assert torch.equal(kept("fc.weight"), torch.arange(512).expand(100, 512) < 256)  # fc[:, :256]
    fit = sum(kept(n).sum().item() for n in masks)
    total = sum(params[n].numel() for n in masks)
    assert 0.25 < fit / total < 0.26  # s_r^2 of the conv weights, plus the stem's and fc's extra
    # the KE reset: kept part exact, the rest redrawn, biases and BatchNorm untouched
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    ke.reinitialize_(model, masks, seed=0, generation=1)
    for n, p in model.named_parameters():
        if n in masks:
            k = kept(n)
            assert torch.equal(p[k], state[n][k]) and (p[~k] != state[n][~k]).all()
        else:
            assert torch.equal(p, state[n])


def test_kels_stem_is_the_first_conv_not_the_3_channel_one():
    model = resnet18(num_classes=10, in_channels=5)
    masks = ke.split_masks(model, 0.25)
    assert masks["conv1.weight"] == KELS(16, 5) and masks["layer1.0.conv1.weight"] == KELS(16, 16)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 6), nn.Linear(6, 4))
    masks = ke.split_masks(net, 0.5)
    assert masks == {"0.weight": KELS(2, 1), "1.weight": KELS(4, 2), "3.weight": KELS(3, 4),
                     "4.weight": KELS(4, 3)}


def test_wels_split_of_resnet18():
    model = resnet18(num_classes=10)
    masks = ke.split_masks(model, 0.5, mode="wels", seed=1)
    assert all(isinstance(m, WELS) and m.rate == 0.5 for m in masks.values())
    assert len({m.seed for m in masks.values()}) == len(masks)  # distinct per layer
    assert masks == ke.split_masks(model, 0.5, mode="wels", seed=1)
    assert masks != ke.split_masks(model, 0.5, mode="wels", seed=2)
    params = dict(model.named_parameters())
    keep = fs.reference.ke_keep_mask(params["layer3.0.conv1.weight"].shape, masks["layer3.0.conv1.weight"])
    assert abs(keep.float().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("call, error, message", [
    (lambda m: ke.split_masks(m, 0.0), ValueError, r"split_rate must be a float in \(0, 1\]"),
    (lambda m: ke.split_masks(m, 1.5), ValueError, r"split_rate must be a float in \(0, 1\]"),
    (lambda m: ke.split_masks(m, 0.5, mode="filters"), ValueError, "mode must be 'kels' or 'wels'"),
    (lambda m: ke.reinitialize_(m, {"nope.weight": KELS(1)}, 0, 1), KeyError, "nope.weight"),
    (lambda m: dsd.magnitude_masks(m, 1.2), ValueError, r"sparsity must be a float in \[0, 1\]"),
    (lambda m: dsd.magnitude_masks(m, {"0.bias": 0.5}), KeyError, "0.bias"),
])
def test_method_helper_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(nn.Sequential(nn.Linear(4, 4)))


# ---- DSD ---------------------------------------------------------------------------------------------

def test_magnitude_masks_prune_smallest_per_layer_and_apply():
    model = resnet18(num_classes=10)
    masks = dsd.magnitude_masks(model, 0.3)
    params = dict(model.named_parameters())
    assert set(masks) == set(ke.split_masks(model, 0.5))
    for name, keep in masks.items():
        w = params[name].detach()
        assert keep.dtype == torch.bool and keep.shape == w.shape
        assert (~keep).sum().item() == round(0.3 * w.numel())
        assert w.abs()[~keep].max() <= w.abs()[keep].min()
    want = {n: p.detach().clone() for n, p in params.items()}
    torch._foreach_mul_([want[n] for n in masks], list(masks.values()))
    dsd.apply_masks_(model, masks)
    for n, p in model.named_parameters():
        assert torch.equal(bits(p.detach()), bits(want[n]))
    per_layer = dsd.magnitude_masks(model, {"conv1.weight": 0.5, "fc.weight": 0.0})
    assert set(per_layer) == {"conv1.weight", "fc.weight"} and per_layer["fc.weight"].all()
    assert (~per_layer["conv1.weight"]).sum() == round(0.5 * params["conv1.weight"].numel())


def test_dsd_redense_restarts_pruned_weights_at_zero():
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 5))
    masks = dsd.magnitude_masks(model, 0.5)
    dsd.apply_masks_(model, masks)
    params = dict(model.named_parameters())
    ws = [params[n] for n in masks]
    fs.ops.ke_reinit_(ws, list(masks.values()), seed=0, init="zero")
    for w, keep in zip(ws, masks.values()):
        assert (w[~keep] == 0).all() and not torch.signbit(w[~keep]).any()


# ---- bad input -------------------------------------------------------------------------------------

def _w():
    return torch.randn(4, 3)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("call, error, message", [
    (lambda b: fs.ops.ke_reinit_([_w()], [torch.ones(3, 4, dtype=torch.bool)], 0, backend=b), ValueError,
     r"masks\[0\] has shape \(3, 4\) but tensors\[0\] has shape \(4, 3\)"),
    (lambda b: fs.ops.ke_reinit_([_w()], [torch.ones(4, 3)], 0, backend=b), TypeError,
     r"masks\[0\] must be a bool tensor, got torch.float32"),
    (lambda b: fs.ops.ke_reinit_([_w()], [KELS(5, 1)], 0, backend=b), ValueError,
     r"kels_out\[0\] = 5 is out of range: tensors\[0\] has shape \(4, 3\), expected 0 <= k_out <= 4"),
    (lambda b: fs.ops.ke_reinit_([_w(), _w()], [KELS(1), KELS(2, 4)], 0, backend=b), ValueError,
     r"kels_in\[1\] = 4 is out of range"),
    (lambda b: fs.ops.masked_mul_([_w()], [KELS(-2, 1)], backend=b), ValueError, r"kels_out\[0\] = -2 is out of range"),
    (lambda b: fs.ops.ke_reinit_([_w()], [WELS(1.5, 0)], 0, backend=b), ValueError,
     r"wels_rate\[0\] = 1.5 is outside \[0, 1\]"),
    (lambda b: fs.ops.masked_mul_([_w()], [WELS(float("nan"), 0)], backend=b), ValueError, "is outside"),
    (lambda b: fs.ops.ke_reinit_([_w()], [WELS(0.5, 2 ** 64)], 0, backend=b), ValueError,
     r"masks\[0\].seed must be an int in the int64 range"),
    (lambda b: fs.ops.ke_reinit_([_w()], [KELS(1)], 0, init="xavier", backend=b), ValueError,
     r"init must be one of \('torch_default', 'kaiming_normal', 'zero'\), got 'xavier'"),
    (lambda b: fs.ops.ke_reinit_([torch.randn(5)], [KELS(1)], 0, backend=b), ValueError,
     r"init='torch_default' needs tensors with at least 2 dims"),
    (lambda b: fs.ops.ke_reinit_([_w()], [KELS(1)], seed=1.5, backend=b), ValueError, "seed must be an int"),
    (lambda b: fs.ops.ke_reinit_([_w()], [KELS(1)], 0, generation=2 ** 63, backend=b), ValueError,
     "generation must be an int in the int64 range"),
    (lambda b: fs.ops.ke_reinit_([_w(), _w()], [KELS(1)], 0, backend=b), ValueError,
     "masks has 1 entries but tensors has 2"),
    (lambda b: fs.ops.ke_reinit_(_w(), [KELS(1)], 0, backend=b), TypeError, "tensors must be a list or tuple"),
    (lambda b: fs.ops.ke_reinit_([_w()], KELS(1), 0, backend=b), ValueError, "masks has 2 entries"),
    (lambda b: fs.ops.ke_reinit_([_w()], [0.5], 0, backend=b), TypeError,
     r"masks\[0\] must be a bool tensor shaped like tensors\[0\], fastsmall.ops.KELS or fastsmall.ops.WELS"),
    (lambda b: fs.ops.ke_reinit_([torch.ones(4, 3, dtype=torch.int32)], [KELS(1)], 0, backend=b), TypeError,
     r"tensors\[0\] must be a floating-point tensor"),
    (lambda b: fs.ops.ke_reinit_([_w().t()], [KELS(1)], 0, backend=b), ValueError, r"tensors\[0\] must be contiguous"),
    (lambda b: fs.ops.ke_reinit_([_w(), torch.randn(2, 2, device="meta")], [KELS(1), KELS(1)], 0, backend=b),
     ValueError, r"tensors\[1\] is on meta but tensors\[0\] is on cpu"),
    (lambda b: fs.ops.masked_mul_([_w()], [torch.ones(4, 3, dtype=torch.bool, device="meta")], backend=b),
     ValueError, r"masks\[0\] is on meta but tensors\[0\] is on cpu"),
    (lambda b: fs.ops.ke_reinit_([torch.tensor(1.0)], [KELS(1)], 0, init="zero", backend=b), ValueError,
     r"masks\[0\] is KELS but tensors\[0\] is 0-dimensional"),
    (lambda b: fs.ops.ke_reinit_([_w()], [KELS(1)], 0, backend=b + "x"), ValueError, "backend must be one of"),
    (lambda b: fs.ops.ke_reinit_([], [], 0, backend=b + "x"), ValueError, "backend must be one of"),
])
def test_wrapper_errors(backend, device, call, error, message):
    with pytest.raises(error, match=message):
        call(backend)


def _op_args(masks=(None,), kels_out=(-1,), kels_in=(-1,), rate=(0.5,), seed=(0,), tensors=None):
    return [tensors if tensors is not None else [_w()], list(masks), list(kels_out), list(kels_in), list(rate),
            list(seed)]


@needs_cpp
@pytest.mark.parametrize("args, message", [
    (_op_args(masks=(torch.ones(3, 4, dtype=torch.bool),), rate=(-1.0,)), r"masks\[0\] has shape \[3, 4\]"),
    (_op_args(masks=(torch.ones(4, 3),), rate=(-1.0,)), r"masks\[0\] must be a bool tensor"),
    (_op_args(kels_out=(5,), kels_in=(1,), rate=(-1.0,)), r"kels_out\[0\] = 5 is out of range"),
    (_op_args(kels_out=(1,), kels_in=(9,), rate=(-1.0,)), r"kels_in\[0\] = 9 is out of range"),
    (_op_args(rate=(2.0,)), r"wels_rate\[0\] = 2 is outside \[0, 1\]"),
    (_op_args(rate=(-1.0,)), "tensor 0 must have exactly one mask kind"),
    (_op_args(kels_out=(1,), kels_in=(1,)), "tensor 0 must have exactly one mask kind"),
    (_op_args(seed=(0, 1)), "wels_seed has 2 entries but tensors has 1"),
    (_op_args(tensors=[_w().t()]), r"tensors\[0\] must be contiguous"),
    (_op_args(tensors=[torch.ones(4, 3, dtype=torch.int64)]), r"tensors\[0\] must be a floating-point tensor"),
])
def test_cpp_kernel_errors(args, message):
    """Callers of torch.ops.fastsmall.* that skip the wrappers still get errors, never a crash."""
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastsmall.masked_mul_(*args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastsmall.ke_reinit_(*args, 0, 0, "torch_default")


@needs_cpp
def test_cpp_kernel_rejects_unknown_init_and_1d_fan_in():
    with pytest.raises(RuntimeError, match="init must be one of"):
        torch.ops.fastsmall.ke_reinit_(*_op_args(), 0, 0, "uniform")
    with pytest.raises(RuntimeError, match="needs tensors with at least 2 dims"):
        torch.ops.fastsmall.ke_reinit_(*_op_args(tensors=[torch.randn(5)]), 0, 0, "kaiming_normal")
    torch.ops.fastsmall.ke_reinit_(*_op_args(tensors=[torch.randn(5)]), 0, 0, "zero")  # zero needs no fan_in


# ---- registered ops: opcheck, torch.compile ---------------------------------------------------------

def _opcheck_samples():
    def enc(ts, ms):
        return [ts, *km.encode(ts, ms)]

    out = []
    ts, ms = layer_list("cpu")
    out.append(("ke_reinit_", enc(ts, ms) + [3, 1, "torch_default"]))
    out.append(("ke_reinit_", enc([t.double() for t in ts], ms) + [-5, 2, "kaiming_normal"]))
    out.append(("ke_reinit_", enc([torch.randn(3, 4, dtype=torch.bfloat16)], [WELS(0.5, 1)]) + [0, 0, "zero"]))
    out.append(("masked_mul_", enc(ts, ms)))
    out.append(("masked_mul_", enc([torch.randn(5, 2, dtype=torch.float16)], [torch.rand(5, 2) > 0.5])))
    return out


SAMPLES = _opcheck_samples()


@needs_cpp
@pytest.mark.parametrize("name, args", SAMPLES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)])
def test_opcheck(name, args):
    # All four checks apply to these mutating ops: test_schema verifies the (a!) annotation
    # against the mutation the kernel actually does, test_autograd_registration that the
    # op is fine without autograd formulas (inputs need no grad), and test_faketensor /
    # test_aot_dispatch_dynamic run the fakes and the functionalised (auto_functionalize) op.
    result = torch.library.opcheck(getattr(torch.ops.fastsmall, name).default, args)
    assert set(result) == {"test_schema", "test_autograd_registration", "test_faketensor",
                           "test_aot_dispatch_dynamic"}


def _ke_step(ws, generation):
    masks = [KELS(4, 2), WELS(0.5, 3), KELS(2)]
    fs.ops.ke_reinit_(ws, masks, seed=11, generation=generation, init="kaiming_normal")
    fs.ops.masked_mul_(ws, masks)
    return sum(w.sum() for w in ws)


@needs_cpp
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_aot_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_ke_step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    shapes = [(8, 4, 3, 3), (10, 6), (3, 5)]
    for generation in (1, 2):
        ws = [torch.randn(s) for s in shapes]
        eager_ws = [w.clone() for w in ws]
        got = compiled(ws, generation)
        want = _ke_step(eager_ws, generation)
        torch.testing.assert_close(got, want)
        for a, b in zip(ws, eager_ws):
            assert torch.equal(a, b)  # the mutation reached the caller's tensors
    model = nn.Sequential(nn.Linear(4, 10), nn.Linear(6, 8), nn.Linear(5, 3))  # parameters as inputs
    ws = [model[0].weight, model[1].weight, model[2].weight]
    before = [w.detach().clone() for w in ws]
    compiled(ws, 3)
    assert torch.equal(ws[0][:4, :2], before[0][:4, :2]) and not torch.equal(ws[0], before[0])


@pytest.mark.parametrize("compiled", [False, True])
def test_official_baselines(compiled):
    """The benchmarks' baselines do what they stand for, and compile without graph breaks."""
    torch._dynamo.reset()
    ws = [torch.randn(8, 6, 3), torch.randn(5, 10)]
    keeps = [torch.rand(8, 6, 3) > 0.5, torch.rand(5, 10) > 0.5]
    reinit, mul = official_ke_reinit_, official_masked_mul_
    if compiled:
        reinit = torch.compile(reinit, fullgraph=True, backend="aot_eager")
        mul = torch.compile(mul, fullgraph=True, backend="aot_eager")
    a = [w.clone() for w in ws]
    reinit(a, keeps)
    for x, w, k in zip(a, ws, keeps):
        b = 1 / math.sqrt(km.fan_in(w.shape))
        assert torch.equal(x[k], w[k]) and (x[~k] != w[~k]).all() and (x[~k].abs() <= b).all()
    mul(a, keeps)
    for x, k in zip(a, keeps):
        assert (x[~k] == 0).all() and (x[k] != 0).all()
