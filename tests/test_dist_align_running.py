"""fastsmall.ops.DistAlign, the running class distribution in both published conventions, on every
backend: against plain models of CReST's window and USB's EMA (bit for bit over a wrapped window),
checkpointing through state_dict, torch.compile and bad arguments."""
import pytest
import torch

import fastsmall as fs
from conftest import available_backends
from fastsmall import _extension as ext

BACKENDS = available_backends()
needs_ops = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-11)}


# ---- DistAlign: both running conventions against the official update rules -----------------------------

def batches(n, B, C, dtype=torch.float32, empty_at=None):
    out = []
    for i in range(n):
        rows = 0 if i == empty_at else B + i % 3
        out.append((torch.randn(rows, C, dtype=torch.float64) * 2 + torch.linspace(1, -1, C, dtype=torch.float64))
                   .to(dtype))
    return out


class CrestWindow:
    """CReST's running prior as its training code keeps it (google-research/crest ``PMovingAverage``):
    a [W, C] window initialised to 1/C, ``running = mean(window) / sum``, oldest row first."""

    def __init__(self, C, window=128, dtype=torch.float32, device="cpu"):
        self.window = torch.full((window, C), 1.0 / C, dtype=dtype, device=device)

    def running(self):
        running = self.window.mean(0)
        return running / running.sum()

    def update(self, batch_mean):
        self.window = torch.cat([self.window[1:], batch_mean[None].to(self.window.dtype)])


class UsbEma:
    """USB's running prior (``DistAlignEMAHook.update_p``): the first batch mean, then an EMA."""

    def __init__(self, C, momentum=0.999, dtype=torch.float32, device="cpu"):
        self.m, self.dtype = momentum, dtype
        self.ema = torch.full((C,), 1.0 / C, dtype=dtype, device=device)
        self.started = torch.tensor(False, device=device)

    def update(self, batch_mean):
        batch_mean = batch_mean.to(self.dtype)
        blended = self.ema * self.m + batch_mean * (1 - self.m)
        self.ema = torch.where(self.started, blended, batch_mean)
        self.started = torch.ones_like(self.started)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["window", "ema"])
def test_dist_align_follows_the_official_update_rule(backend, device, mode):
    """CReST's PMovingAverage (update after aligning) and USB's DistAlignEMAHook (momentum, batch
    mean as the first value, update before aligning), step by step, with the softmax mean of the
    raw logits as those codes take it."""
    C, steps = 6, 6
    prior = torch.tensor([40.0, 20, 10, 5, 3, 2])
    dtype = torch.float64
    window = 4 if mode == "window" else 128  # a short window wraps around within the test
    da = fs.ops.DistAlign(C, mode, window=window, momentum=0.9, dtype=dtype, device=device)
    oracle = CrestWindow(C, window, dtype) if mode == "window" else UsbEma(C, 0.9, dtype)
    for i, logits in enumerate(batches(steps, 12, C, dtype, empty_at=3)):
        out = da(logits.to(device), prior.to(device), 0.5, 0.6, backend=backend)
        batch_mean = torch.softmax(logits, dim=-1).mean(dim=0)
        if mode == "ema" and logits.shape[0]:
            oracle.update(batch_mean)
        running = oracle.running() if mode == "window" else oracle.ema
        want = fs.reference.distribution_align(logits, prior, running, 0.5, 0.6)
        if mode == "window" and logits.shape[0]:
            oracle.update(batch_mean)
        torch.testing.assert_close(out.probs.cpu(), want[0], **TOL[dtype])
        assert torch.equal(out.pseudo_label.cpu(), want[1]) and torch.equal(out.mask.cpu(), want[2])
        torch.testing.assert_close(da.running.cpu(), oracle.running() if mode == "window" else oracle.ema,
                                   **TOL[dtype])
    assert da.count.item() == steps - 1  # the empty batch changed nothing


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["window", "ema"])
@pytest.mark.parametrize("C", [6, 10])
def test_dist_align_running_is_bitwise_crests(backend, device, mode, C):
    """Over more than a window of updates (the ring wraps), ``running`` has exactly the bits of
    CReST's float32 running prior fed the same batch means (C = 6: 1/C is not the window's mean)."""
    steps = 140 if mode == "window" else 20
    da = fs.ops.DistAlign(C, mode, device=device)
    oracle = CrestWindow(C, device=device) if mode == "window" else UsbEma(C, device=device)
    prior = torch.linspace(2, 1, C, device=device)
    if mode == "window":
        assert torch.equal(da.running, oracle.running())
    for i in range(steps):
        logits = torch.randn(0 if i == 5 else 6, C, device=device) * 3
        if mode == "ema" and logits.shape[0]:
            oracle.update(fs.ops.softmax_batch_mean(logits, backend=backend))
        before = da.running.clone()
        out = da(logits, prior, 0.5, 0.6, backend=backend)
        if mode == "window":
            if logits.shape[0]:
                oracle.update(out.batch_mean)
            assert torch.equal(da.running, oracle.running()), f"step {i}"
        else:
            assert torch.equal(da.running, oracle.ema), f"step {i}"
        if not logits.shape[0]:
            assert torch.equal(da.running, before)  # an empty batch leaves the state unchanged


def test_dist_align_defaults_are_the_published_ones():
    window, ema = fs.ops.DistAlign(10), fs.ops.DistAlign(10, "ema")
    assert (window.mode, window.window_size, window.window.shape) == ("window", 128, (128, 10))
    assert ema.momentum == 0.999 and not hasattr(ema, "window")
    assert torch.equal(window.running, torch.full((10,), 0.1)) and window.running.dtype == torch.float32
    assert torch.equal(ema.running, torch.full((10,), 0.1))
    assert "mode='ema', momentum=0.999" in repr(ema)


@pytest.mark.parametrize("mode", ["window", "ema"])
def test_dist_align_state_dict_round_trip(mode):
    C = 5
    da = fs.ops.DistAlign(C, mode)
    for logits in batches(3, 10, C):
        da(logits, torch.ones(C))
    clone = fs.ops.DistAlign(C, mode)
    clone.load_state_dict(da.state_dict())
    logits = torch.randn(7, C)
    a, b = da(logits, torch.ones(C)), clone(logits, torch.ones(C))
    assert torch.equal(a.probs, b.probs) and torch.equal(da.running, clone.running)
    assert set(da.state_dict()) == ({"running", "count", "window"} if mode == "window" else {"running", "count"})


@needs_ops
@pytest.mark.parametrize("mode", ["window", "ema"])
def test_dist_align_compiles_fullgraph(mode):
    C = 5
    eager, compiled_da = fs.ops.DistAlign(C, mode, window=3), fs.ops.DistAlign(C, mode, window=3)
    torch._dynamo.reset()
    step = torch.compile(compiled_da, fullgraph=True, backend="aot_eager")
    prior = torch.tensor([5.0, 4, 3, 2, 1])
    for logits in batches(5, 8, C):
        a, b = eager(logits, prior, 0.5, 0.5), step(logits, prior, 0.5, 0.5)
        torch.testing.assert_close(b.probs, a.probs)
        torch.testing.assert_close(compiled_da.running, eager.running)
    assert compiled_da.count.item() == eager.count.item() == 5


def test_dist_align_errors():
    with pytest.raises(ValueError, match="mode must be 'window' \\(CReST\\) or 'ema' \\(USB\\)"):
        fs.ops.DistAlign(10, "queue")
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        fs.ops.DistAlign(0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        fs.ops.DistAlign(10, window=0)
    with pytest.raises(ValueError, match="momentum must be a float in \\[0, 1\\)"):
        fs.ops.DistAlign(10, "ema", momentum=1.0)
    with pytest.raises(ValueError, match="logits has 4 classes but this DistAlign has 10"):
        fs.ops.DistAlign(10)(torch.randn(3, 4), torch.ones(10))


@pytest.mark.parametrize("W", [1, 4, 7])
def test_dist_align_batches_start_is_the_mean_of_the_batches_seen(W):
    """start='batches': uniform before the first update; after n updates the normalised mean of the
    last min(n, W) batch means (no uniform rows); from n = W on, the official window's exact bits.
    An empty batch counts as no update."""
    C = 6
    da, official = fs.ops.DistAlign(C, window=W, start="batches"), fs.ops.DistAlign(C, window=W)
    prior = torch.linspace(2, 1, C)
    assert torch.equal(da.running, torch.full((C,), 1.0 / C))
    means = []
    for n, logits in enumerate(batches(2 * W + 3, 9, C, empty_at=2), start=1):
        out = da(logits, prior)
        official(logits, prior)
        if logits.shape[0]:
            means.append(torch.softmax(logits.double(), dim=1).mean(0))
        if not means:
            assert torch.equal(da.running, torch.full((C,), 1.0 / C))
            continue
        seen = torch.stack(means[-W:]).mean(0)
        torch.testing.assert_close(da.running.double(), seen / seen.sum(), atol=1e-6, rtol=1e-5)
        if len(means) >= W:
            assert torch.equal(da.running, official.running)
        else:  # the official window still holds uniform rows
            assert not torch.allclose(official.running.double(), seen / seen.sum(), atol=1e-4)
        assert torch.isfinite(out.probs).all()


@needs_ops
def test_dist_align_batches_start_compiles_fullgraph():
    C = 5
    eager = fs.ops.DistAlign(C, window=3, start="batches")
    compiled_da = fs.ops.DistAlign(C, window=3, start="batches")
    torch._dynamo.reset()
    step = torch.compile(compiled_da, fullgraph=True, backend="aot_eager")
    prior = torch.tensor([5.0, 4, 3, 2, 1])
    for logits in batches(5, 8, C):
        a, b = eager(logits, prior), step(logits, prior)
        torch.testing.assert_close(b.probs, a.probs)
        torch.testing.assert_close(compiled_da.running, eager.running)


def test_dist_align_start_errors():
    with pytest.raises(ValueError, match="start must be 'uniform'"):
        fs.ops.DistAlign(10, start="zeros")
    assert "start='batches'" in repr(fs.ops.DistAlign(3, window=2, start="batches"))
