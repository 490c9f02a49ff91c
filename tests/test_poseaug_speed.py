"""PoseAug's --compile / --precision (methods/poseaug/gan.py, train.py; common/speed.py): the compiled
G step, D steps and estimator step are one graph each (fullgraph=True raises on any break), compiled
fp32 follows eager fp32 over 20+ G+D iterations and the estimator's steps, the varying kept-pose
batch sizes compile nothing new after the first epoch that trains the estimator, bf16 without
matrix units says so once, bf16 with them keeps parameters, geometry and losses float32.

The compiled-step tests run torch.compile's ``aot_eager`` backend (``StepSpeed.backend``): the same
Dynamo graphs and AOTAutograd forward/backward split as inductor, without code generation, which
takes minutes on a small shared CPU. Inductor runs are measured in ``bench/`` (see README)."""
import copy
import os
import tempfile

import pytest
import torch
from torch._dynamo.utils import counters

from fastsmall.methods.common import Distributed
from fastsmall.methods.common import speed as sp
from fastsmall.methods.common.config import validate_config
from fastsmall.methods.poseaug import Config
from fastsmall.methods.poseaug.gan import _AutocastHead
from fastsmall.methods.poseaug.train import STAGE_POSEAUG, PoseAugTrainer
from pipeline_helpers import one_thread, run_cli  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
BACKEND = os.environ.get("FASTSMALL_TEST_COMPILE_BACKEND", "aot_eager")  # "inductor": minutes here

# 136 poses at batch 16: 8 full G batches + one of 8 per epoch (the last one partial, as released)
SMALL = dict(train_size=136, test_size=32, batch_size=16, epochs=4, warmup=1, baseline_epochs=0,
             estimator="simple_baseline", estimator_width=16, pool_size=24, quiet=True)


def trainer(**kw) -> PoseAugTrainer:
    cfg = Config(out=tempfile.mkdtemp(), **{**SMALL, **kw})
    validate_config(cfg)
    t = PoseAugTrainer(cfg, Distributed(torch.device("cpu")))
    t.stage = STAGE_POSEAUG
    return t


def epoch(t: PoseAugTrainer, e: int) -> dict:
    t.epoch = e
    return t._poseaug_epoch()


def test_cli_accepts_compile_and_precision():
    out = run_cli("fastsmall.methods.poseaug", ["--help"])
    assert out.returncode == 0, out.stderr
    assert "--compile" in out.stdout and "--precision" in out.stdout and "bf16" in out.stdout


def test_compiled_steps_match_eager_without_graph_breaks_or_recompiles(monkeypatch):
    """Four epochs of G and D iterations (9 G iterations each) and the estimator's steps on each
    epoch's kept poses, every epoch started by both from the same state: compiled (fullgraph=True:
    one graph per step function, a break raises) = eager to float tolerance, and after the first
    epoch that trains the estimator no new graph is compiled although the kept-pose count, hence
    the estimator's last batch, changes between epochs."""
    monkeypatch.setattr(sp.StepSpeed, "backend", BACKEND)
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = trainer(), trainer(compile=True)
    assert compiled.speed.compiled and compiled.gan.speed is compiled.speed
    graphs, kept = [], []
    for e in range(4):
        a, b = epoch(eager, e), epoch(compiled, e)
        graphs.append(counters["stats"]["unique_graphs"])
        kept.append(a["augmented_kept"])
        assert a.keys() == b.keys()
        for k in a:  # accuracies are fractions of 16 scores: one may flip at a 0.5 boundary
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1.5 / 16 if k.endswith("_acc") else 1e-5), (e, k)
        # Each epoch starts both from eager's state (epochs are seeded by their number): the GAN is
        # chaotic, and float-level differences between the two (~1e-6 after an epoch) can grow to
        # several % within two more epochs on one trajectory and stay at 1e-5 on another
        # (measured). What is tested is the step, one epoch at a time, not the chaos.
        compiled.load_state(copy.deepcopy(eager.state()))
    # epoch 0: G full + partial, D 3d / 2d full + partial; epoch 1 adds the estimator's two graphs
    assert graphs[0] == 6 and graphs[1] == graphs[2] == graphs[3] == 8, graphs
    assert len({k % 16 for k in kept[1:]}) > 1, kept  # the estimator's last batch size did vary
    # the models compute the same functions (Adam moves near-zero-gradient coordinates, e.g. the
    # biases in front of BatchNorm, by up to lr per step either way: compare outputs, not weights;
    # in train mode, where BatchNorm's batch statistics cancel those biases; same noise and dropout)
    x3d, x2d = eager.train_set.poses_3d[:32], eager.train_set.poses_2d[:32]
    with torch.no_grad():
        for fa, fb, x in ((eager.estimator, compiled.estimator, x2d), (eager.gan.d3d, compiled.gan.d3d, x3d),
                          (eager.gan.d2d, compiled.gan.d2d, x2d), (eager.gan.generator, compiled.gan.generator, x3d)):
            torch.manual_seed(5)
            ya = fa(x)
            torch.manual_seed(5)
            yb = fb(x)
            if isinstance(ya, dict):  # the augmentor: its last pose (every head enters it)
                ya, yb = ya["pose_rt"], yb["pose_rt"]
            torch.testing.assert_close(yb, ya, rtol=1e-3, atol=1e-4)


def test_eager_fp32_is_not_compiled():
    t = trainer()
    assert not t.speed.compiled and t.speed.precision == "fp32"
    assert t._estimator_full == t._estimator_loss and t.gan._g_losses == t.gan._generator_losses
    assert all(g["foreach"] and not g.get("fused") for o in (t.opt_p, t.gan.opt_g, t.gan.opt_d3d)
               for g in o.param_groups)
    assert not any(isinstance(h, _AutocastHead) for h in t.gan.generator.modules())


def test_bf16_without_units_says_so_once_and_runs_fp32(monkeypatch, capsys):
    monkeypatch.setattr(sp, "bf16_supported", lambda device: (False, "no units here"))
    monkeypatch.setattr(sp, "_warned", set())
    for _ in range(2):
        t = trainer(precision="bf16")
        assert t.speed.precision == "fp32" and t.speed.dtype is None and t.gan.speed is t.speed
    said = capsys.readouterr().out
    assert said.count("--precision bf16") == 1 and "no units here" in said and "fp32" in said


def test_bf16_with_units_keeps_parameters_geometry_and_losses_fp32(monkeypatch):
    """Autocast runs the models' matmuls in bf16 (emulated here); parameters, Adam state, BatchNorm
    statistics, the augmentor's poses and every loss stay float32, and training runs."""
    monkeypatch.setattr(sp, "bf16_supported", lambda device: (True, ""))
    t = trainer(precision="bf16", train_size=48)
    assert t.speed.precision == "bf16"
    heads = [t.gan.generator.ba, t.gan.generator.bl, t.gan.generator.rot, t.gan.generator.trans]
    assert all(isinstance(h, _AutocastHead) for h in heads)
    x3d, cams = t.train_set.poses_3d[:16], t.train_set.cams[:16]
    out, rt_2d, loss, feedback, _ = t.gan._g_losses(x3d, cams, t.estimator, 3.0, 17.0)
    assert all(out[k].dtype == torch.float32 for k in ("pose_ba", "pose_bl", "pose_rt", "ba_diff", "blr"))
    assert rt_2d.dtype == loss.dtype == feedback.dtype == torch.float32
    with t.speed.autocast():
        assert t.gan.d2d.pose_layer_1(torch.randn(4, 32)).dtype == torch.bfloat16
    for e in range(2):
        record = epoch(t, e)
    assert record["estimator_loss_augmented"] > 0 or record["augmented_kept"] == 0
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
    for m in (*t.gan.models, t.estimator):
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in m.parameters())
        assert all(b.dtype in (torch.float32, torch.int64) for b in m.buffers())
    for opt in (t.opt_p, t.gan.opt_g, t.gan.opt_d3d, t.gan.opt_d2d):
        assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    assert set(t.gan.generator.state_dict()) == set(trainer().gan.generator.state_dict())  # same checkpoints


def test_foreach_adam_is_the_loops_arithmetic_and_resume_keeps_this_runs_flags():
    """PoseAug's Adam runs foreach=True: bitwise the released per-tensor loop. A checkpoint carries
    the saving run's foreach / fused flags; loading keeps this run's (--compile may change on resume)."""
    torch.manual_seed(0)
    ps = [torch.randn(33, 17, requires_grad=True), torch.randn(5, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    loop = torch.optim.Adam(ps, lr=1e-3, foreach=False)
    fast = sp.StepSpeed(Config(), torch.device("cpu")).adam(qs, lr=1e-3)
    for step in range(6):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        loop.step()
        fast.step()
        for opt in (loop, fast):
            opt.param_groups[0]["lr"] *= 0.9
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    compiled = sp.StepSpeed(Config(compile=True), torch.device("cpu"))
    fused = compiled.adam([q.detach().clone().requires_grad_() for q in qs], lr=1e-3)
    compiled.load_optimizer_state(fused, fast.state_dict())
    assert fused.param_groups[0]["fused"] and not fused.param_groups[0]["foreach"]
    for p in fused.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    fused.step()
    assert fused.state[fused.param_groups[0]["params"][0]]["step"].item() == 7


def test_compiled_discriminator_leaky_relu_has_leaky_relus_gradient():
    """The discriminators' leaky-ReLU inside a compiled graph (backward from the saved output, no
    bool mask: see discriminators._LeakyReLUFromOutput) gives F.leaky_relu's values and gradient
    exactly, x == 0 and -0.0 included, and passes gradcheck in float64."""
    from fastsmall.methods.poseaug.discriminators import _LeakyReLUFromOutput, leaky_relu
    x = torch.tensor([-3.0, -1e-30, -0.0, 0.0, 1e-30, 2.5], dtype=torch.float64)
    x = torch.cat([x, torch.randn(257, dtype=torch.float64)]).requires_grad_()
    g = torch.randn_like(x)
    want_y = torch.nn.functional.leaky_relu(x, 0.2)
    (want,) = torch.autograd.grad(want_y, x, g)
    for fn in (lambda t: _LeakyReLUFromOutput.apply(t, 0.2),
               torch.compile(lambda t: leaky_relu(t, 0.2), backend="aot_eager", fullgraph=True)):
        y = fn(x)
        (got,) = torch.autograd.grad(y, x, g)
        assert torch.equal(y, want_y) and torch.equal(got, want)
    assert torch.autograd.gradcheck(lambda t: _LeakyReLUFromOutput.apply(t, 0.01), (torch.randn(7, 3,
                                    dtype=torch.float64, requires_grad=True),))
