"""Shared test set-up.

Triton kernels are tested on CPU through the Triton interpreter when there is no
GPU; TRITON_INTERPRET must be set before fastsmall (and its @triton.jit kernels)
is imported, hence here, before any test module imports fastsmall.
"""
import os
import random
import zlib
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastsmall  # noqa: E402
from fastsmall import _extension as ext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_backends():
    """(backend, device) pairs this machine can test; reasons for the others."""
    out = [("reference", "cpu")]
    out.append(pytest.param("cpp", "cpu", marks=pytest.mark.skipif(
        ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")))
    triton_ok = ext.TRITON_ERROR is None and (torch.cuda.is_available() or ext.triton_interpreted())
    out.append(pytest.param("triton", "cuda" if torch.cuda.is_available() else "cpu", marks=pytest.mark.skipif(
        not triton_ok, reason=f"Triton unavailable: {ext.TRITON_ERROR or 'no GPU and TRITON_INTERPRET unset'}")))
    return out


def device_for(backend):
    """The device a backend's tests run on: the C++ kernels and the reference on CPU, Triton on DEVICE."""
    return torch.device("cpu") if backend in ("cpp", "reference") else DEVICE


def assert_fake_matches_real(op, args):
    """A registered op's fake gives its real outputs' shapes, strides and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


def op_registration_tests(samples):
    """The registration tests every op family runs on its ``samples`` [(op name, args)]:
    ``torch.library.opcheck`` and fake-vs-real output strides. Assign the returned pair to
    ``test_opcheck, test_fake_and_real_outputs_have_same_strides`` in the family's test module."""
    needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")
    each_sample = pytest.mark.parametrize("name, args", samples, ids=[f"{n}-{i}" for i, (n, _) in enumerate(samples)])

    @needs_cpp
    @each_sample
    def test_opcheck(name, args):
        torch.library.opcheck(getattr(torch.ops.fastsmall, name).default, args)

    @needs_cpp
    @each_sample
    def test_fake_and_real_outputs_have_same_strides(name, args):
        assert_fake_matches_real(getattr(torch.ops.fastsmall, name), args)

    return test_opcheck, test_fake_and_real_outputs_have_same_strides


def random_parents(J: int, rng: random.Random) -> list[int]:
    """A random tree on J joints with shuffled joint labels (parents not in topological order)."""
    labels = list(range(J))
    rng.shuffle(labels)
    parents = [-1] * J
    for i in range(1, J):
        # mostly chain-like with branches, so depths vary
        parent_pos = rng.choice([i - 1, i - 1, rng.randrange(i)])
        parents[labels[i]] = labels[parent_pos]
    return parents


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random data per test, yet reproducible: the seed derives from the test id."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    random.seed(seed)
    yield


@pytest.fixture
def rng(request):
    return random.Random(zlib.crc32(request.node.nodeid.encode()))
