"""--seeds for CReST / CReST+ / FixMatch (issue #13): K replicas stacked in one process, each exactly
its own single-seed run -- in float64 every logged number, parameter, EMA weight and DA state to
1e-10 and the pseudo-label sets bit for bit; resume after a kill; --compile; the CLI; the stacked
SGD over two param groups (CReST's decay / no-decay split)."""
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from fastsmall.methods import crest
from fastsmall.methods.common.checkpoint import CheckpointError, load_checkpoint
from fastsmall.methods.common.config import ConfigError, validate_config
from fastsmall.methods.common.replicas import ReplicaStack
from fastsmall.methods.crest.stacked import StackedCReST
from fastsmall.methods.models import DigitsCNN
from pipeline_helpers import assert_cli_prints_seeds_table, assert_seed_runs_close, dies_on_call, one_thread  # noqa: F401

# threshold 0.5 and a short EMA: pseudo-labels pass the mask and the EMA model's accuracy moves
# within a few steps, so the comparison covers the unlabelled loss, DA and the pseudo-label picks
TINY = dict(generations=2, epochs=2, steps_per_epoch=3, batch_size=8, mu=2, eval_last=1, threshold=0.5, ema=0.5,
            quiet=True)
train_module = sys.modules["fastsmall.methods.crest.train"]


@pytest.fixture
def float64(monkeypatch):
    original = train_module.load_split

    def load(cfg):
        split = original(cfg)
        for name in ("x_labelled", "x_unlabelled", "x_test"):
            setattr(split, name, getattr(split, name).double())
        return split

    monkeypatch.setattr(train_module, "load_split", load)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _lines(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def _assert_close(a, b, where=""):
    """Nested records equal; floats to 1e-10 (wall-clock "seconds" aside)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-10, abs=1e-10), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a.keys() - {"seconds"}:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _state(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.mark.parametrize("plus,impl,generations", [(True, "fused", 3), (False, "official", 2)])
def test_stacked_crest_is_each_seeds_single_run(tmp_path, float64, plus, impl, generations):
    seeds = [3, 0, 5]
    cfg = dict(TINY, generations=generations, plus=plus, impl=impl)
    summary = crest.train(crest.Config(out=str(tmp_path / "stacked"), seeds=seeds, **cfg))
    stacked = _state(tmp_path / "stacked")
    for k, seed in enumerate(seeds):
        single = tmp_path / f"single-{seed}"
        one = crest.train(crest.Config(out=str(single), seed=seed, **cfg))
        mine = tmp_path / "stacked" / f"seed-{seed}"
        _assert_close(_lines(mine / "metrics.jsonl"), _lines(single / "metrics.jsonl"))
        _assert_close(summary["per_seed"][str(seed)], json.loads(json.dumps(one)))
        # the last generation's pseudo-label set (the earlier ones: the records compared above)
        a, b = stacked["replicas"][k], _state(single)
        assert a["generation"] == b["generation"] == generations
        assert torch.equal(a["pseudo_idx"], b["pseudo_idx"]) and torch.equal(a["pseudo_label"], b["pseudo_label"])
    # the replicas differ from each other (each its own seed), and the run did pseudo-label
    per_seed = [summary["per_seed"][str(s)] for s in seeds]
    assert len({json.dumps(p["class_rank"]) for p in per_seed}) == len(seeds)
    records = [r for r in _lines(tmp_path / "stacked" / "seed-3" / "metrics.jsonl") if r["type"] == "generation"]
    assert sum(records[0]["pseudo_labels"]["count"]) > 0
    assert max(r["mask_rate"] for r in _lines(tmp_path / "stacked" / "seed-3" / "metrics.jsonl")
               if r["type"] == "epoch") > 0


def test_stacked_crest_mid_generation_state_is_each_seeds(tmp_path, float64, monkeypatch):
    """Mid-run (after the first generation's pseudo-labelling, inside the second): network, EMA, momentum,
    DA window and pseudo-label set of every replica equal its single-seed run's at the same epoch."""
    cfg = dict(TINY, generations=3, plus=True)
    seeds = [1, 2]
    kill = 4  # the 4th epoch's start: the checkpoint after the 3rd (generation 1, epoch 1)
    dies_on_call(monkeypatch, StackedCReST, "train_epoch", kill)
    with pytest.raises(KeyboardInterrupt):
        crest.train(crest.Config(out=str(tmp_path / "stacked"), seeds=seeds, **cfg))
    stacked = _state(tmp_path / "stacked")
    original_single = train_module.CReSTTrainer._train_epoch
    for k, seed in enumerate(seeds):
        monkeypatch.setattr(train_module.CReSTTrainer, "_train_epoch", original_single)
        dies_on_call(monkeypatch, train_module.CReSTTrainer, "_train_epoch", kill)
        with pytest.raises(KeyboardInterrupt):
            crest.train(crest.Config(out=str(tmp_path / f"single-{seed}"), seed=seed, **cfg))
        a, b = stacked["replicas"][k], _state(tmp_path / f"single-{seed}")
        assert (a["generation"], a["epoch"], a["step"]) == (b["generation"], b["epoch"], b["step"]) == (1, 1, 3)
        assert torch.equal(a["pseudo_idx"], b["pseudo_idx"]) and len(a["pseudo_idx"]) > 0
        for part in ("model", "ema", "labeler"):
            for name in b[part]:
                if torch.is_tensor(b[part][name]):
                    torch.testing.assert_close(a[part][name], b[part][name], rtol=0, atol=1e-10,
                                               msg=f"{part}.{name}")
        for i, st in b["optimizer"]["state"].items():
            torch.testing.assert_close(a["optimizer"]["state"][i]["momentum_buffer"], st["momentum_buffer"],
                                       rtol=0, atol=1e-10)


def test_stacked_crest_resumes_after_a_kill_as_uninterrupted(tmp_path, monkeypatch):
    cfg = dict(TINY, seeds=[0, 4], plus=True)
    straight = crest.train(crest.Config(out=str(tmp_path / "a"), **cfg))
    original = dies_on_call(monkeypatch, StackedCReST, "train_epoch", 4)  # generation 1, epoch 1
    with pytest.raises(KeyboardInterrupt):
        crest.train(crest.Config(out=str(tmp_path / "b"), **cfg))
    monkeypatch.setattr(StackedCReST, "train_epoch", original)
    resumed = crest.train(crest.Config(out=str(tmp_path / "b"), resume=True, **cfg))
    assert resumed == straight
    for seed in (0, 4):
        assert _lines(tmp_path / "a" / f"seed-{seed}" / "metrics.jsonl") == \
            _lines(tmp_path / "b" / f"seed-{seed}" / "metrics.jsonl")
    # resuming the finished run trains nothing and reports the same
    assert crest.train(crest.Config(out=str(tmp_path / "b"), resume=True, **cfg)) == straight


def test_stacked_crest_layout_aggregate_and_bad_input(tmp_path):
    run = tmp_path / "run"
    summary = crest.train(crest.Config(out=str(run), seeds=[0, 1, 2], **TINY))
    for seed in (0, 1, 2):
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            assert (run / f"seed-{seed}" / name).is_file(), name
    assert (run / "plots" / "seeds.png").stat().st_size > 0
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    bal = summary["metrics"]["test_balanced_accuracy"]
    assert bal["values"] == [json.loads((run / f"seed-{s}" / "summary.json").read_text())["test_balanced_accuracy"]
                             for s in (0, 1, 2)]
    assert "test_tail_recall" in summary["metrics"] and summary["settings"] == {"generations": 2}
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        validate_config(crest.Config(seeds=[1, 1]))
    with pytest.raises(CheckpointError, match="already holds a run"):
        crest.train(crest.Config(out=str(run), seeds=[0, 1, 2], **TINY))
    with pytest.raises(CheckpointError, match="config"):
        crest.train(crest.Config(out=str(run), seeds=[0, 1], resume=True, **TINY))


def test_stacked_crest_composes_with_compile(tmp_path, monkeypatch):
    """--seeds --compile: the vmapped forward compiles as one graph (fullgraph) and trains as eager
    (aot_eager: the same graphs without code generation)."""
    from fastsmall.methods.common import speed
    monkeypatch.setattr(speed.StepSpeed, "backend", "aot_eager")
    cfg = dict(TINY, seeds=[0, 1], plus=True)
    crest.train(crest.Config(out=str(tmp_path / "eager"), **cfg))
    crest.train(crest.Config(out=str(tmp_path / "compiled"), compile=True, **cfg))
    assert_seed_runs_close(tmp_path / "eager", tmp_path / "compiled", (0, 1), rel=1e-4, abs=1e-5)


def test_crest_cli_seeds(tmp_path, capsys):
    from fastsmall.methods.crest.__main__ import main
    args = ["--generations", "2", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--mu", "2",
            "--eval-last", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert_cli_prints_seeds_table(main, args, capsys, (2, 5), "test_balanced_accuracy")


def test_crest_experiment_stacked_is_the_sequential_experiment(tmp_path, float64):
    """The documented experiment's runner with --stacked: per (method, seed) the same summary and
    records as the single-seed runs one after another (float64: to 1e-10)."""
    from fastsmall.methods.crest import experiment
    base = crest.Config(**TINY)
    stacked = experiment.run(tmp_path / "stacked", [0, 3], base, stacked=True)
    sequential = experiment.run(tmp_path / "sequential", [0, 3], base, stacked=False)
    assert stacked.keys() == sequential.keys() and len(stacked) == 2 * len(experiment.METHODS)
    for key, a in stacked.items():
        b = sequential[key]
        _assert_close(a, b, str(key))
    report = experiment.report(stacked, [0, 3], base, "cmd", 1.0)
    assert report == experiment.report(sequential, [0, 3], base, "cmd", 1.0)
    # the paired differences and the mechanism table are there, with the numbers of the runs
    for row in ("| crest − fixmatch |", "| crest+ − fixmatch |", "| crest+ − crest |", "| crest+ | 1 |"):
        assert row in report, row
    fix, plus = (stacked[(m, s)]["test_balanced_accuracy"] for m, s in (("fixmatch", 0), ("crest+", 0)))
    fix3, plus3 = (stacked[(m, s)]["test_balanced_accuracy"] for m, s in (("fixmatch", 3), ("crest+", 3)))
    mean = ((plus - fix) + (plus3 - fix3)) / 2
    assert f"| crest+ − fixmatch | {mean:+.3f} ± " in report


def test_crest_experiment_precision_reaches_every_run(tmp_path, monkeypatch, one_thread):
    """--precision (bf16 parity of the documented experiment, issue 12): every run's config has it,
    the reproduce command names it; fp32 stays out of the command (the default)."""
    import dataclasses
    from fastsmall.methods.crest import experiment
    seen, real_run = [], experiment.run

    def tiny_run(out, seeds, base, stacked=False):  # the runner's own run, at the tests' size
        seen.append(base)
        return real_run(out, seeds, dataclasses.replace(base, **{k: v for k, v in TINY.items()
                                                                 if k not in ("generations", "epochs")}), stacked)

    monkeypatch.setattr(experiment, "run", tiny_run)
    argv = ["--seeds", "0", "--generations", "2", "--epochs", "2", "--out", str(tmp_path / "bf16")]
    assert experiment.main(argv + ["--precision", "bf16"]) == 0
    assert seen[-1].precision == "bf16"
    configs = sorted((tmp_path / "bf16").glob("*-seed0/config.json"))
    assert len(configs) == len(experiment.METHODS)
    assert {json.loads(c.read_text())["precision"] for c in configs} == {"bf16"}
    assert "--epochs 2 --precision bf16`" in (tmp_path / "bf16" / "report.md").read_text()
    assert experiment.main(["--seeds", "0", "--generations", "2", "--epochs", "2", "--out", str(tmp_path / "fp32")]) == 0
    assert seen[-1].precision == "fp32" and "--precision" not in (tmp_path / "fp32" / "report.md").read_text()


# ---- the stacked SGD over param groups ----------------------------------------------------------------
def _groups(model):
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": 5e-3}, {"params": no_decay, "weight_decay": 0.0}]


def test_replica_stack_sgd_keeps_each_param_group(float64):
    torch.manual_seed(0)
    models = [DigitsCNN(10, 1, width=8) for _ in range(2)]
    separate = [DigitsCNN(10, 1, width=8) for _ in range(2)]
    for a, b in zip(separate, models):
        a.load_state_dict(b.state_dict())
    kw = dict(lr=0.1, momentum=0.9, nesterov=True)
    opts = [torch.optim.SGD(_groups(m), **kw) for m in models]
    stack = ReplicaStack(models)
    stacked = stack.sgd(opts)
    assert [g["weight_decay"] for g in stacked.param_groups] == [5e-3, 0.0]
    sep = [torch.optim.SGD(_groups(m), **kw) for m in separate]
    loss_fn = stack.functional(lambda net, x, y: F.cross_entropy(net(x), y))
    for _ in range(3):
        x, y = torch.randn(2, 8, 1, 8, 8), torch.randint(0, 10, (2, 8))
        stacked.zero_grad()
        loss_fn(x, y).sum().backward()
        stacked.step()
        for k, (m, o) in enumerate(zip(separate, sep)):
            o.zero_grad()
            F.cross_entropy(m(x[k]), y[k]).backward()
            o.step()
    for m, s in zip(models, separate):
        for (name, a), b in zip(m.state_dict().items(), s.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


def test_replica_stack_sgd_rejects_different_groups():
    models = [DigitsCNN(10, 1, width=8) for _ in range(2)]
    stack = ReplicaStack(models)
    one_group = torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="param groups"):
        stack.sgd([one_group, torch.optim.SGD(_groups(models[1]), lr=0.1, momentum=0.9)])
    with pytest.raises(ValueError, match="not its replica's"):
        stack.sgd([one_group, torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9)])
