"""Property-based fuzzing of every op family (issue #11), with hypothesis.

For each family, random *valid* inputs -- random trees (parents not in topological order), batch
shapes including empty ones, non-contiguous views (transposed, sliced, expanded), all four float
dtypes -- give every available backend the reference's result (within a dtype's tolerance;
ke_reinit_ / masked_mul_ bit for bit), gradients included; and random *invalid* inputs (one
argument broken at a time: wrong dims, dtypes, shapes, bad parents / parts / masks / scalars)
raise a ValueError / TypeError whose message names the argument.

Reproducible and bounded: ``derandomize=True`` (a fixed seed: the same examples every run),
no example database, ``deadline=None`` (a loaded machine), and a fixed number of examples per
test (``EXAMPLES``). Values are finite (NaN / inf semantics are tested by the family modules).
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastsmall as fs
from conftest import available_backends, device_for, random_parents
from fastsmall.ops import KELS, WELS

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if "reference" not in str(b)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(atol=3e-5, rtol=3e-5), torch.float64: dict(atol=1e-11, rtol=1e-11),
       torch.float16: dict(atol=4e-3, rtol=4e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}
EXAMPLES = dict(valid=60, invalid=60)


def fuzz(kind: str):
    return settings(max_examples=EXAMPLES[kind], derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture],
                    print_blob=True)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, dtype, seed, scale=1.0):
    """Finite normal values, drawn in float64 and rounded to ``dtype`` (on the CPU)."""
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


LAYOUTS = ["contiguous", "transposed", "sliced", "batch-strided", "expanded"]


def _view(shape, dtype, seed, layout, scale=1.0):
    """A tensor of ``shape`` with the given memory layout (values drawn once, then viewed)."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:  # the last two dims swapped in memory
        return _randn(shape[:-2] + (shape[-1], shape[-2]), dtype, seed, scale).transpose(-1, -2)
    if layout == "sliced" and shape:  # every other element of the last dim
        return _randn(shape[:-1] + (2 * shape[-1] + 1,), dtype, seed, scale)[..., 1::2]
    if layout == "batch-strided" and len(shape) >= 3 and shape[0]:
        return _randn((2 * shape[0],) + shape[1:], dtype, seed, scale)[::2]
    if layout == "expanded" and len(shape) >= 3:  # stride 0 over the first batch dim
        return _randn((1,) + shape[1:], dtype, seed, scale).expand(shape)
    return _randn(shape, dtype, seed, scale)


def _on(t, backend):
    return t.to(device_for(backend)) if isinstance(t, torch.Tensor) else t


# ---- strategies ------------------------------------------------------------------------------------------

seeds = st.integers(0, 2 ** 31 - 1)
batches = st.lists(st.sampled_from([0, 1, 2, 3, 5]), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from(DTYPES)
layouts = st.sampled_from(LAYOUTS)


@st.composite
def trees(draw, min_joints=1, max_joints=40):
    J = draw(st.integers(min_joints, max_joints))
    return tuple(random_parents(J, random.Random(draw(seeds))))


@st.composite
def skeletons_with_parts(draw):
    parents = draw(trees(min_joints=2, max_joints=24))
    NB = len(parents) - 1
    rng = random.Random(draw(seeds))
    parts = {f"part{p}": rng.sample(range(NB), rng.randint(1, NB)) for p in range(rng.randint(1, 5))}
    return fs.Skeleton(parents, parts=parts)


# ---- valid inputs: every backend gives the reference's result ------------------------------------------

def _assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    torch.testing.assert_close(got.detach().cpu(), want.detach(), **TOL[dtype], equal_nan=False)


def _value_and_grads(fn, inputs, cotangent_seed, backend):
    """fn's outputs and the gradients of a random linear functional of them w.r.t. the inputs."""
    # detach() keeps the strides (clone() would make sliced / expanded views contiguous)
    leaves = [_on(t, backend).detach().requires_grad_(t.dtype.is_floating_point) if t is not None else None
              for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    diff = [o for o in outs if o.requires_grad]
    req = [t for t in leaves if t is not None and t.requires_grad]
    grads = []
    if diff and req and all(o.numel() for o in diff):
        cots = [_randn(o.shape, o.dtype, cotangent_seed + i).to(o.device) for i, o in enumerate(diff)]
        grads = torch.autograd.grad(diff, req, cots, allow_unused=True)
    return [o.detach().cpu() for o in outs], [g.cpu() if g is not None else None for g in grads]


def _compare(fn, inputs, backend, dtype, seed):
    got, got_g = _value_and_grads(lambda *a: fn(*a, backend=backend), inputs, seed, backend)
    want, want_g = _value_and_grads(lambda *a: fn(*a, backend="reference"), inputs, seed, "reference")
    for g, w in zip(got, want):
        _assert_close(g, w, dtype)
    assert len(got_g) == len(want_g)
    for g, w in zip(got_g, want_g):
        assert (g is None) == (w is None)
        if g is not None:
            # gradients of low-precision outputs: one more rounding of the cotangent products
            _assert_close(g, w, dtype)


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
@fuzz("valid")
@given(op=st.sampled_from(["kcs_forward", "bone_decompose", "kcs_inverse"]), parents=trees(), batch=batches,
       D=st.sampled_from([2, 3]), dtype=dtypes, layout=layouts, eps=st.sampled_from([0.0, 1e-6, 0.25]),
       with_root=st.booleans(), broadcast_root=st.booleans(), seed=seeds)
def test_kcs_family_matches_reference(backend, device, op, parents, batch, D, dtype, layout, eps, with_root,
                                      broadcast_root, seed):
    sk = fs.Skeleton(parents)
    J = len(parents)
    if op == "kcs_inverse":
        bones = _view(batch + (J - 1, D), dtype, seed, layout)
        root = None
        if with_root:
            rshape = (1,) * len(batch) + (1, D) if broadcast_root else batch + (1, D)
            root = _view(rshape, dtype, seed + 1, layout if not broadcast_root else "contiguous")
        _compare(lambda b, r, backend: fs.ops.kcs_inverse(b, sk, r, backend=backend), [bones, root], backend, dtype,
                 seed)
    elif op == "bone_decompose":
        x = _view(batch + (J, D), dtype, seed, layout)
        _compare(lambda x, backend: fs.ops.bone_decompose(x, sk, eps, backend=backend), [x], backend, dtype, seed)
    else:
        x = _view(batch + (J, D), dtype, seed, layout)
        _compare(lambda x, backend: fs.ops.kcs_forward(x, list(parents), backend=backend), [x], backend, dtype, seed)


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
@fuzz("valid")
@given(sk=skeletons_with_parts(), batch=batches, D=st.sampled_from([2, 3]), dtype=dtypes, layout=layouts,
       compact=st.booleans(), seed=seeds)
def test_part_kcs_gram_matches_reference(backend, device, sk, batch, D, dtype, layout, compact, seed):
    unit = _view(batch + (sk.num_bones, D), dtype, seed, layout)
    layout_name = "compact" if compact else "masked"
    _compare(lambda u, backend: fs.ops.part_kcs_gram(u, sk, layout_name, backend=backend), [unit], backend, dtype,
             seed)


@st.composite
def weight_lists(draw, any_dims: bool):
    """Contiguous tensors of varied shapes and dtypes (on one device), one mask of any kind each."""
    tensors, masks = [], []
    for i in range(draw(st.integers(0, 4))):
        dims = draw(st.integers(0 if any_dims else 2, 4))
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 5, 8]), min_size=dims, max_size=dims)))
        dtype = draw(dtypes)
        seed = draw(seeds)
        tensors.append(_randn(shape, dtype, seed))
        kinds = ["bool", "wels"] + (["kels"] if dims >= 1 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "bool":
            masks.append(torch.rand(shape, generator=_gen(seed + 1)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])))
        elif kind == "kels":
            k_out = draw(st.integers(0, shape[0]))
            cols = shape[1] if dims >= 2 else 1
            masks.append(KELS(k_out, draw(st.one_of(st.none(), st.integers(0, cols)))))
        else:
            masks.append(WELS(draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 0.999])), draw(st.integers(-2 ** 63, 2 ** 63 - 1))))
    return tensors, masks


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
@fuzz("valid")
@given(data=st.data(), op=st.sampled_from(["ke_reinit_", "masked_mul_"]),
       init=st.sampled_from(["torch_default", "kaiming_normal", "zero"]),
       seed=st.integers(-2 ** 63, 2 ** 63 - 1), generation=st.integers(-2 ** 63, 2 ** 63 - 1))
def test_masked_reinit_family_is_bit_identical_to_reference(backend, device, data, op, init, seed, generation):
    tensors, masks = data.draw(weight_lists(any_dims=(op == "masked_mul_" or init == "zero")))
    got = [_on(t.clone(), backend) for t in tensors]
    want = [t.clone() for t in tensors]
    gm = [_on(m, backend) for m in masks]
    if op == "ke_reinit_":
        fs.ops.ke_reinit_(got, gm, seed, generation, init, backend=backend)
        fs.ops.ke_reinit_(want, masks, seed, generation, init, backend="reference")
    else:
        fs.ops.masked_mul_(got, gm, backend=backend)
        fs.ops.masked_mul_(want, masks, backend="reference")
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(_bits(g.cpu()), _bits(w))


@pytest.mark.parametrize("backend, device", KERNEL_BACKENDS)
@fuzz("valid")
@given(op=st.sampled_from(["distribution_align", "softmax_batch_mean", "masked_cross_entropy"]),
       B=st.sampled_from([0, 1, 2, 7, 33]), C=st.sampled_from([1, 2, 5, 10, 37]), dtype=dtypes,
       aux_dtype=dtypes, layout=st.sampled_from(["contiguous", "transposed", "sliced"]),
       temperature=st.floats(0.1, 3.0), threshold=st.floats(0.0, 1.0), eps=st.sampled_from([1e-6, 1e-3, 0.0]),
       return_probs=st.booleans(), float_mask=st.booleans(), seed=seeds)
def test_distribution_align_family_matches_reference(backend, device, op, B, C, dtype, aux_dtype, layout, temperature,
                                                     threshold, eps, return_probs, float_mask, seed):
    logits = _view((B, C), dtype, seed, layout, scale=3.0)
    if op == "masked_cross_entropy":
        target = torch.randint(0, C, (B,), generator=_gen(seed + 1))
        mask = torch.rand(B, generator=_gen(seed + 2))
        mask = mask.to(dtype) if float_mask else mask > 0.4
        _compare(lambda z, t, m, backend: fs.ops.masked_cross_entropy(z, t, m, backend=backend),
                 [logits, target, mask], backend, dtype, seed)
        return
    if op == "softmax_batch_mean":
        got = fs.ops.softmax_batch_mean(_on(logits, backend), backend=backend).cpu()
        want = fs.ops.softmax_batch_mean(logits, backend="reference")
        _assert_close(got, want, want.dtype)
        return
    prior = (torch.rand(C, generator=_gen(seed + 3), dtype=torch.float64) + 0.05).to(aux_dtype)
    running = torch.softmax(torch.randn(C, generator=_gen(seed + 4), dtype=torch.float64), 0).to(aux_dtype)
    args = (temperature, threshold, eps, return_probs)
    got = fs.ops.distribution_align(_on(logits, backend), _on(prior, backend), _on(running, backend), *args,
                                    backend=backend)
    want = fs.ops.distribution_align(logits, prior, running, *args, backend="reference")
    if return_probs:
        _assert_close(got.probs, want.probs, dtype)
    else:
        assert got.probs is None and want.probs is None
    _assert_close(got.batch_mean, want.batch_mean, want.batch_mean.dtype)
    # labels and masks wherever the aligned probabilities are not within rounding of a tie / the threshold
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    aligned = fs.reference.distribution_align(logits.to(compute), prior, running, temperature, threshold, eps)[0]
    margin = 1e-11 if dtype == torch.float64 else 1e-5
    if B:
        top2 = aligned.topk(min(2, C), dim=1).values
        clear = (top2[:, 0] - top2[:, -1] > margin) if C > 1 else torch.ones(B, dtype=torch.bool)
        assert torch.equal(got.pseudo_label.cpu()[clear], want.pseudo_label[clear])
        far = (top2[:, 0] - threshold).abs() > margin
        assert torch.equal(got.mask.cpu()[far], want.mask[far])
    assert got.pseudo_label.dtype == torch.int64 and got.mask.dtype == torch.bool


# ---- invalid inputs: one argument broken, an error naming it ---------------------------------------------

NOT_FLOAT_DTYPES = [torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8]


def _raises_naming(call, argument: str, errors=(ValueError, TypeError)):
    with pytest.raises(errors) as info:
        call()
    message = str(info.value)
    assert argument in message, f"{type(info.value).__name__}: {message!r} does not name {argument!r}"
    assert "\n" not in message


BAD_PARENTS = st.one_of(
    st.lists(st.floats(-1, 5, allow_nan=False), min_size=1, max_size=5).map(lambda p: [-1] + p),
    st.lists(st.booleans(), min_size=1, max_size=4).map(lambda p: [-1] + p),
    st.lists(st.integers(-1, 3), min_size=1, max_size=4).map(lambda p: [p]),  # nested
    st.lists(st.text(max_size=2), min_size=1, max_size=3).map(lambda p: [-1] + p),
    st.just([]),
    st.integers(2, 6).map(lambda J: [-1] * J),  # several roots
    st.integers(2, 6).map(lambda J: [-1] + [J + 3] * (J - 1)),  # out of range
    st.integers(2, 6).map(lambda J: [-1] + [-2 - J] * (J - 1)),  # negative
    st.integers(3, 6).map(lambda J: [-1] + [(j % (J - 1)) + 2 if j < J - 2 else 1 for j in range(J - 1)]),  # cycle
)


@pytest.mark.parametrize("backend, device", BACKENDS)
@fuzz("invalid")
@given(op=st.sampled_from(["kcs_forward", "bone_decompose", "kcs_inverse"]), parents=trees(min_joints=2, max_joints=12),
       batch=batches, dtype=dtypes, bad=st.sampled_from(["parents", "skeleton", "x-dtype", "x-dims", "x-joints",
                                                         "x-D", "x-type", "eps", "root-dtype", "root-shape",
                                                         "root-type"]),
       bad_parents=BAD_PARENTS, bad_dtype=st.sampled_from(NOT_FLOAT_DTYPES),
       bad_eps=st.one_of(st.booleans(), st.floats(max_value=-1e-9, allow_nan=False), st.just(math.nan),
                         st.text(max_size=3), st.none(), st.lists(st.floats(0, 1), max_size=2)),
       bad_D=st.sampled_from([0, 1, 4, 5]), extra=st.integers(1, 3), seed=seeds)
def test_kcs_family_rejects_invalid_input(backend, device, op, parents, batch, dtype, bad, bad_parents, bad_dtype,
                                          bad_eps, bad_D, extra, seed):
    dev = device_for(backend)
    sk = fs.Skeleton(parents)
    J, D = len(parents), 3
    rows = J - 1 if op == "kcs_inverse" else J
    name = "bones" if op == "kcs_inverse" else "x"
    t = _randn(batch + (rows, D), dtype, seed).to(dev)
    skeleton, eps, root = sk, 0.1, None
    argument = {"parents": "parents", "skeleton": "skeleton", "eps": "eps"}.get(bad, name)
    if bad == "parents":
        skeleton = bad_parents
    elif bad == "skeleton":
        skeleton = random.Random(seed).choice(["h36m16", None, 3, torch.tensor(parents), {"parents": parents}])
    elif bad == "x-dtype":
        t = torch.zeros(t.shape, dtype=bad_dtype, device=dev)
    elif bad == "x-dims":
        t = torch.zeros((rows,) if seed % 2 else (), dtype=dtype, device=dev)
    elif bad == "x-joints":
        t = _randn(batch + (rows + extra, D), dtype, seed).to(dev)
    elif bad == "x-D":
        t = _randn(batch + (rows, bad_D), dtype, seed).to(dev)
    elif bad == "x-type":
        t = t.tolist() if seed % 2 else None
    elif bad == "eps":
        assume(op == "bone_decompose")
        eps = bad_eps
    elif bad.startswith("root"):
        assume(op == "kcs_inverse")
        argument = "root"
        if bad == "root-dtype":
            other = torch.float64 if dtype != torch.float64 else torch.float32
            root = torch.zeros(batch + (1, D), dtype=random.Random(seed).choice([other, bad_dtype]), device=dev)
        elif bad == "root-shape":
            root = torch.zeros(batch + (1 + extra, D), dtype=dtype, device=dev)
        else:
            root = [0.0] * D
    if op == "kcs_forward":
        _raises_naming(lambda: fs.ops.kcs_forward(t, skeleton, backend=backend), argument)
    elif op == "bone_decompose":
        _raises_naming(lambda: fs.ops.bone_decompose(t, skeleton, eps, backend=backend), argument)
    else:
        _raises_naming(lambda: fs.ops.kcs_inverse(t, skeleton, root, backend=backend), argument)


@pytest.mark.parametrize("backend, device", BACKENDS)
@fuzz("invalid")
@given(sk=skeletons_with_parts(), batch=batches, dtype=dtypes,
       bad=st.sampled_from(["unit-dtype", "unit-bones", "unit-D", "unit-dims", "layout", "no-parts", "parents"]),
       bad_dtype=st.sampled_from(NOT_FLOAT_DTYPES), bad_layout=st.one_of(st.text(max_size=6), st.none(), st.integers()),
       bad_parents=BAD_PARENTS, extra=st.integers(1, 3), seed=seeds)
def test_part_kcs_gram_rejects_invalid_input(backend, device, sk, batch, dtype, bad, bad_dtype, bad_layout,
                                             bad_parents, extra, seed):
    dev = device_for(backend)
    unit = _randn(batch + (sk.num_bones, 3), dtype, seed).to(dev)
    skeleton, layout, argument = sk, "masked", "unit"
    if bad == "unit-dtype":
        unit = torch.zeros(unit.shape, dtype=bad_dtype, device=dev)
    elif bad == "unit-bones":
        unit = _randn(batch + (sk.num_bones + extra, 3), dtype, seed).to(dev)
    elif bad == "unit-D":
        unit = _randn(batch + (sk.num_bones, 3 + extra), dtype, seed).to(dev)
    elif bad == "unit-dims":
        unit = torch.zeros(sk.num_bones, dtype=dtype, device=dev)
    elif bad == "layout":
        assume(bad_layout not in ("masked", "compact"))
        layout, argument = bad_layout, "layout"
    elif bad == "no-parts":
        skeleton, argument = fs.Skeleton(sk.parents), "parts"
    else:
        skeleton, argument = bad_parents, "parents"
    _raises_naming(lambda: fs.ops.part_kcs_gram(unit, skeleton, layout, backend=backend), argument)


@pytest.mark.parametrize("backend, device", BACKENDS)
@fuzz("invalid")
@given(data=st.data(), op=st.sampled_from(["ke_reinit_", "masked_mul_"]),
       bad=st.sampled_from(["tensors-type", "tensor-dtype", "non-contiguous", "masks-type", "masks-length",
                            "mask-kind", "mask-dtype", "mask-shape", "kels-range", "kels-type", "wels-rate",
                            "wels-seed", "seed", "generation", "init", "init-dims"]),
       bad_dtype=st.sampled_from([torch.int64, torch.int32, torch.bool, torch.uint8]), seed=seeds)
def test_masked_reinit_family_rejects_invalid_input(backend, device, data, op, bad, bad_dtype, seed):
    dev = device_for(backend)
    rng = random.Random(seed)
    tensors = [_randn((rng.randint(1, 5), rng.randint(1, 5)), data.draw(dtypes), seed + i).to(dev) for i in range(3)]
    masks = [KELS(1), WELS(0.5, 7), torch.ones(tensors[2].shape, dtype=torch.bool, device=dev)]
    i = rng.randrange(3)  # the tensor / mask that is broken
    kw = dict(seed=3, generation=1, init="torch_default")
    assume(op == "ke_reinit_" or bad not in ("seed", "generation", "init", "init-dims"))
    if bad == "tensors-type":
        tensors, argument = rng.choice([tensors[0], None, 3.0, {"w": tensors[0]}]), "tensors"
    elif bad == "tensor-dtype":
        tensors[i], argument = torch.zeros(tensors[i].shape, dtype=bad_dtype, device=dev), f"tensors[{i}]"
    elif bad == "non-contiguous":
        tensors[i], argument = _randn((4, 3), torch.float32, seed).to(dev).t(), f"tensors[{i}]"
        masks[i] = KELS(1)
    elif bad == "masks-type":
        masks, argument = rng.choice([None, masks[0], "KELS", 3]), "masks"
    elif bad == "masks-length":
        masks, argument = masks[:rng.randrange(3)] + masks[3:], "masks"
    elif bad == "mask-kind":
        masks[i], argument = rng.choice([None, 1, (1, 2), "all", [True]]), f"masks[{i}]"
    elif bad == "mask-dtype":
        masks[i], argument = torch.ones(tensors[i].shape, dtype=rng.choice([torch.int64, torch.float32]), device=dev), \
            f"masks[{i}]"
    elif bad == "mask-shape":
        shape = tensors[i].shape
        masks[i], argument = torch.ones((shape[0] + 1, shape[1]), dtype=torch.bool, device=dev), f"masks[{i}]"
    elif bad == "kels-range":
        which = rng.choice(["out", "in"])
        limit = tensors[i].shape[0 if which == "out" else 1]
        v = rng.choice([-1, -5, limit + 1, limit + 10])
        masks[i], argument = (KELS(v) if which == "out" else KELS(0, v)), f"kels_{which}[{i}]"
    elif bad == "kels-type":
        masks[i], argument = KELS(rng.choice([1.0, True, "1", None])), f"masks[{i}]"
    elif bad == "wels-rate":
        v = rng.choice([-1.0, -0.5, 1.5, math.nan, math.inf, True, "0.5", None])
        masks[i] = WELS(v, 1)
        argument = f"wels_rate[{i}]" if isinstance(v, float) else f"masks[{i}]"
    elif bad == "wels-seed":
        masks[i], argument = WELS(0.5, rng.choice([1.5, 2 ** 63, -2 ** 63 - 1, True, None])), f"masks[{i}].seed"
    elif bad == "seed":
        kw["seed"], argument = rng.choice([1.5, True, 2 ** 63, None, "0"]), "seed"
    elif bad == "generation":
        kw["generation"], argument = rng.choice([0.0, False, -2 ** 63 - 1, None]), "generation"
    elif bad == "init":
        kw["init"], argument = rng.choice(["xavier", "", None, 0, ["zero"]]), "init"
    else:  # init-dims: the default inits need fan_in
        tensors[i], masks[i], argument = _randn((5,), torch.float32, seed).to(dev), KELS(1), "init"
    if op == "ke_reinit_":
        _raises_naming(lambda: fs.ops.ke_reinit_(tensors, masks, backend=backend, **kw), argument)
    else:
        _raises_naming(lambda: fs.ops.masked_mul_(tensors, masks, backend=backend), argument)


@pytest.mark.parametrize("backend, device", BACKENDS)
@fuzz("invalid")
@given(op=st.sampled_from(["distribution_align", "softmax_batch_mean", "masked_cross_entropy"]),
       B=st.sampled_from([0, 1, 4]), C=st.sampled_from([1, 3, 6]), dtype=dtypes,
       bad=st.sampled_from(["logits-dtype", "logits-dims", "logits-type", "no-classes", "prior", "running",
                            "temperature", "threshold", "eps", "target-dtype", "target-shape", "target-type",
                            "mask-dtype", "mask-shape"]),
       bad_dtype=st.sampled_from(NOT_FLOAT_DTYPES),
       bad_temperature=st.one_of(st.booleans(), st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan),
                                 st.text(max_size=2), st.none()),
       bad_threshold=st.one_of(st.booleans(), st.floats(min_value=1.0, exclude_min=True),
                               st.floats(max_value=0.0, exclude_max=True), st.just(math.nan), st.none()),
       bad_eps=st.one_of(st.booleans(), st.floats(max_value=-1e-12), st.just(math.nan), st.none()),
       extra=st.integers(1, 3), seed=seeds)
def test_distribution_align_family_rejects_invalid_input(backend, device, op, B, C, dtype, bad, bad_dtype,
                                                         bad_temperature, bad_threshold, bad_eps, extra, seed):
    dev = device_for(backend)
    rng = random.Random(seed)
    logits = _randn((B, C), dtype, seed).to(dev)
    prior, running = torch.full((C,), 1.0 / C, device=dev), torch.full((C,), 1.0 / C, device=dev)
    target, mask = torch.zeros(B, dtype=torch.int64, device=dev), torch.ones(B, dtype=torch.bool, device=dev)
    scalars = dict(temperature=1.0, threshold=0.5, eps=1e-6)
    argument = "logits"
    if bad == "logits-dtype":
        logits = torch.zeros((B, C), dtype=bad_dtype, device=dev)
    elif bad == "logits-dims":
        logits = _randn(rng.choice([(C,), (B, C, extra), ()]), dtype, seed).to(dev)
    elif bad == "logits-type":
        logits = rng.choice([None, logits.tolist(), 1.0])
    elif bad == "no-classes":
        logits = torch.zeros((B, 0), dtype=dtype, device=dev)
    elif bad in ("prior", "running"):
        assume(op == "distribution_align")
        argument = bad
        v = rng.choice([torch.zeros(C + extra, device=dev), torch.zeros(1, C, device=dev), [0.5] * C, None,
                        torch.zeros(C, dtype=bad_dtype, device=dev)])
        prior, running = (v, running) if bad == "prior" else (prior, v)
    elif bad in ("temperature", "threshold", "eps"):
        assume(op == "distribution_align")
        argument = bad
        scalars[bad] = {"temperature": bad_temperature, "threshold": bad_threshold, "eps": bad_eps}[bad]
    elif bad.startswith("target") or bad.startswith("mask"):
        assume(op == "masked_cross_entropy")
        argument = bad.split("-")[0]
        if bad == "target-dtype":
            target = torch.zeros(B, dtype=rng.choice([torch.int32, torch.float32, torch.bool]), device=dev)
        elif bad == "target-shape":
            target = torch.zeros(rng.choice([(B + extra,), (B, 1)]), dtype=torch.int64, device=dev)
        elif bad == "target-type":
            target = rng.choice([None, [0] * B])
        elif bad == "mask-dtype":
            mask = torch.ones(B, dtype=rng.choice([torch.int64, torch.uint8, torch.int32]), device=dev)
        else:
            mask = torch.ones(rng.choice([(B + extra,), (B, 1)]), dtype=torch.bool, device=dev)
    if op == "distribution_align":
        _raises_naming(lambda: fs.ops.distribution_align(logits, prior, running, **scalars, backend=backend), argument)
    elif op == "softmax_batch_mean":
        _raises_naming(lambda: fs.ops.softmax_batch_mean(logits, backend=backend), argument)
    else:
        _raises_naming(lambda: fs.ops.masked_cross_entropy(logits, target, mask, backend=backend), argument)
