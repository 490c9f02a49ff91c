"""--precision / --channels-last / --compile (fastsmall/methods/common/speed.py): what each
changes and what it must not (no graph breaks in a compiled step, compiled fp32 = eager fp32,
bf16 only with bf16 matrix units, float32 parameters and losses)."""
import tempfile

import pytest
import torch

from fastsmall.methods.common import Distributed
from fastsmall.methods.common import speed as sp
from fastsmall.methods.common.config import ConfigError, validate_config
from fastsmall.methods.crest.config import Config as CrestConfig
from fastsmall.methods.crest.train import CReSTTrainer
from fastsmall.methods.ke.config import Config as KEConfig


def crest_trainer(**kw) -> CReSTTrainer:
    cfg = CrestConfig(plus=True, quiet=True, out=tempfile.mkdtemp(), steps_per_epoch=2, epochs=10, **kw)
    validate_config(cfg)
    t = CReSTTrainer(cfg, Distributed(torch.device("cpu")))
    t._fresh_generation_state()
    return t


def test_matrix_units_report_has_the_cpu_flags():
    units = sp.matrix_units()
    flags = sp.cpu_flags()
    assert units["avx512_bf16"] == ("avx512_bf16" in flags) and units["amx_bf16"] == ("amx_bf16" in flags)
    assert units["cpu_bf16"] == (units["avx512_bf16"] or units["amx_bf16"])
    assert units["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_bf16_without_units_says_so_once_and_runs_fp32(monkeypatch):
    monkeypatch.setattr(sp, "bf16_supported", lambda device: (False, "no units here"))
    monkeypatch.setattr(sp, "_warned", set())
    said = []
    cfg = CrestConfig(precision="bf16")
    for _ in range(2):
        s = sp.StepSpeed(cfg, torch.device("cpu"), said.append)
        assert s.precision == "fp32" and s.dtype is None
    assert len(said) == 1 and "no units here" in said[0] and "fp32" in said[0]


def test_bf16_with_units_autocasts_matmuls_and_keeps_parameters_fp32(monkeypatch):
    monkeypatch.setattr(sp, "bf16_supported", lambda device: (True, ""))
    t = crest_trainer(precision="bf16", channels_last=True)
    assert t.speed.precision == "bf16"
    with t.speed.autocast():
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    t._train_epoch()
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in t.model.buffers())
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    stem = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("value", ["fp16", "bfloat16", ""])
def test_precision_is_checked(value):
    with pytest.raises(ConfigError, match="precision must be one of"):
        validate_config(KEConfig(precision=value))


def test_compiled_crest_step_has_no_graph_breaks_and_matches_eager():
    """One graph (fullgraph=True raises on any break), and 6 steps of compiled fp32 equal eager fp32
    to float tolerance (same seed, same batches)."""
    eager, compiled = crest_trainer(), crest_trainer(compile=True)
    explanation = torch._dynamo.explain(eager._losses)(torch.randn(32 * 15, 1, 8, 8), torch.randint(0, 10, (32,)), 0.7)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    for _ in range(3):
        a, b = eager._train_epoch(), compiled._train_epoch()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for p, q in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_foreach_sgd_is_the_same_arithmetic_as_the_loop():
    """The methods' SGD runs foreach=True (fewer kernel launches); it must be the official loop's numbers."""
    torch.manual_seed(0)
    ps = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt_a = torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=False)
    opt_b = torch.optim.SGD(qs, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True)
    for step in range(5):
        g = [torch.randn_like(p) for p in ps]
        for p, q, gi in zip(ps, qs, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
