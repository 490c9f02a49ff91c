"""--seeds (issue #13): K replicas stacked in one process, each exactly its own single-seed run.

The stack (fastsmall/methods/common/replicas.py) against separate modules in float64; KE and DSD
stacked runs against the single-seed runs of the same seeds (float64: every parameter, BatchNorm
statistic and logged number to 1e-10; DSD's masks and KE's fit/reset split bit for bit); the
output layout and the aggregate; resume after a kill; bad input."""
import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastsmall.methods import dsd, ke
from fastsmall.methods.common import generations
from fastsmall.methods.common.checkpoint import CheckpointError
from fastsmall.methods.common.config import ConfigError, validate_config
from fastsmall.methods.common.replicas import ReplicaStack
from fastsmall.methods.common.seeds import aggregate
from fastsmall.methods.common.stacked_generations import StackedGenerations
from fastsmall.methods.models import DigitsCNN
from pipeline_helpers import assert_cli_prints_seeds_table, assert_seed_runs_close, dies_on_call

TINY = dict(epochs=2, warmup_epochs=1, per_class=6, test_per_class=20, width=8, batch_size=16, quiet=True)


@pytest.fixture
def float64(monkeypatch):
    """Networks and images in float64 (the equivalence tests' precision)."""
    original = generations.load_data

    def load(cfg):
        data = original(cfg)
        data.x_train, data.x_test = data.x_train.double(), data.x_test.double()
        return data

    monkeypatch.setattr(generations, "load_data", load)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# ---- the stack ---------------------------------------------------------------------------------
def test_replica_stack_equals_separate_modules_float64():
    torch.manual_seed(0)
    models = [DigitsCNN(10, 1, width=8).double() for _ in range(3)]
    separate = [copy.deepcopy(m) for m in models]
    stack = ReplicaStack(models)
    # each replica's module is row k of the stack (same Parameter objects, shared storage)
    assert models[2].conv2.weight.data_ptr() == stack.params["conv2.weight"][2].data_ptr()
    assert models[1].bn3.running_var.data_ptr() == stack.buffers["bn3.running_var"][1].data_ptr()
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=True)
    opts = [torch.optim.SGD(m.parameters(), **kw) for m in models]
    stacked_opt = stack.sgd(opts)
    sep_opts = [torch.optim.SGD(m.parameters(), **kw) for m in separate]
    loss_fn = stack.functional(lambda net, x, y: F.cross_entropy(net(x), y))
    for step in range(4):
        x = torch.randn(3, 16, 1, 8, 8, dtype=torch.float64)
        y = torch.randint(0, 10, (3, 16))
        stacked_opt.zero_grad()
        loss_fn(x, y).sum().backward()
        stacked_opt.step()
        for k, (m, o) in enumerate(zip(separate, sep_opts)):
            o.zero_grad()
            F.cross_entropy(m(x[k]), y[k]).backward()
            o.step()
    for m, s in zip(models, separate):
        for (name, a), b in zip(m.state_dict().items(), s.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    # the replicas' own optimizers hold their rows of the stacked momentum
    p = models[1].stem.weight
    assert opts[1].state[p]["momentum_buffer"].data_ptr() == \
        stacked_opt.state[stack.params["stem.weight"]]["momentum_buffer"][1].data_ptr()
    torch.testing.assert_close(opts[1].state[p]["momentum_buffer"],
                               sep_opts[1].state[separate[1].stem.weight]["momentum_buffer"], rtol=0, atol=1e-12)


def test_replica_stack_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        ReplicaStack([])
    with pytest.raises(ValueError, match="architecture"):
        ReplicaStack([DigitsCNN(10, 1, width=8), torch.nn.Linear(3, 4)])
    models = [DigitsCNN(10, 1, width=8) for _ in range(2)]
    stack = ReplicaStack(models)
    with pytest.raises(ValueError, match="hyper-parameters"):
        stack.sgd([torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9),
                   torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.5)])
    with pytest.raises(ValueError, match="dampening"):
        stack.sgd([torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.1) for m in models])


def test_replica_stack_reattaches_replaced_tensors():
    models = [DigitsCNN(10, 1, width=8) for _ in range(2)]
    stack = ReplicaStack(models)
    assert stack.reattach() == 0
    w = models[1].conv2.weight
    w.data = torch.full_like(w, 3.0)  # as the official KE loop does: a new tensor, not an update
    assert w.data_ptr() != stack.params["conv2.weight"][1].data_ptr()
    assert stack.reattach() == 1
    assert w.data_ptr() == stack.params["conv2.weight"][1].data_ptr()
    assert torch.all(stack.params["conv2.weight"][1] == 3.0) and not torch.all(stack.params["conv2.weight"][0] == 3.0)


# ---- stacked runs = single-seed runs ---------------------------------------------------------------
def _lines(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in path.read_text().splitlines()]


def _assert_records_close(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=1e-10, abs=1e-10), k
            else:
                assert ra[k] == rb[k], k


def _last_state(run):
    from fastsmall.methods.common.checkpoint import load_checkpoint
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.mark.parametrize("split,impl", [("kels", "fused"), ("wels", "fused"), ("kels", "official")])
def test_stacked_ke_is_each_seeds_single_run(tmp_path, float64, split, impl):
    """(impl official: the official loop assigns ``w.data = torch.where(...)``, a new tensor; the
    stack re-binds it -- ReplicaStack.reattach -- instead of training a stale copy.)"""
    seeds = [3, 0, 5]
    summary = ke.train(ke.Config(out=str(tmp_path / "stacked"), seeds=seeds, generations=3, split=split, impl=impl,
                                 **TINY))
    for k, seed in enumerate(seeds):
        single = tmp_path / f"single-{seed}"
        one = ke.train(ke.Config(out=str(single), seed=seed, generations=3, split=split, impl=impl, **TINY))
        mine = tmp_path / "stacked" / f"seed-{seed}"
        _assert_records_close(_lines(mine / "metrics.jsonl"), _lines(single / "metrics.jsonl"))
        assert json.loads((mine / "config.json").read_text())["seed"] == seed
        assert summary["per_seed"][str(seed)]["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1e-12)
        a = _last_state(tmp_path / "stacked")["replicas"][k]["model"]
        b = _last_state(single)["model"]
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("impl", ["fused", "official"])
def test_stacked_dsd_is_each_seeds_single_run_masks_bit_for_bit(tmp_path, float64, impl):
    seeds = [1, 2]
    dsd.train(dsd.Config(out=str(tmp_path / "stacked"), seeds=seeds, sparsity=0.5, impl=impl, **TINY))
    for k, seed in enumerate(seeds):
        dsd.train(dsd.Config(out=str(tmp_path / f"single-{seed}"), seed=seed, sparsity=0.5, impl=impl, **TINY))
        _assert_records_close(_lines(tmp_path / "stacked" / f"seed-{seed}" / "metrics.jsonl"),
                              _lines(tmp_path / f"single-{seed}" / "metrics.jsonl"))
        a = _last_state(tmp_path / "stacked")["replicas"][k]
        b = _last_state(tmp_path / f"single-{seed}")
        for name in b["masks"]:
            assert torch.equal(a["masks"][name], b["masks"][name]), name
        for name in b["model"]:
            torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=1e-10, msg=name)


# ---- output, aggregate, resume, bad input ------------------------------------------------------------
def test_stacked_run_layout_and_aggregate(tmp_path):
    summary = ke.train(ke.Config(out=str(tmp_path / "run"), seeds=[0, 1, 2], generations=2, **TINY))
    run = tmp_path / "run"
    for seed in (0, 1, 2):
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            assert (run / f"seed-{seed}" / name).is_file(), name
        assert any((run / f"seed-{seed}" / "plots").iterdir())
    assert (run / "plots" / "seeds.png").stat().st_size > 0
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    acc = summary["metrics"]["test_accuracy"]
    values = [json.loads((run / f"seed-{s}" / "summary.json").read_text())["test_accuracy"] for s in (0, 1, 2)]
    assert acc["values"] == values and acc["n"] == 3
    assert acc["mean"] == pytest.approx(sum(values) / 3)
    assert acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
    assert "generations" in summary["settings"] and "generations" not in summary["metrics"]


def test_aggregate_interval_is_students_t():
    s = aggregate("m", {0: {"a": 1.0}, 1: {"a": 2.0}, 2: {"a": 4.0}, 3: {"a": 5.0}})["metrics"]["a"]
    # mean 3, sample std sqrt(10/3), t(0.975, 3) = 3.182446
    half = 3.182446305284263 * (10 / 3) ** 0.5 / 2
    assert s["mean"] == 3.0 and s["ci95"] == pytest.approx([3 - half, 3 + half], rel=1e-9)
    one = aggregate("m", {7: {"a": 0.5, "name": "x", "flag": True}})["metrics"]
    assert one == {"a": {"mean": 0.5, "std": None, "ci95": None, "n": 1, "values": [0.5]}}


def test_stacked_run_resumes_after_a_kill_as_uninterrupted(tmp_path, monkeypatch):
    cfg = dict(seeds=[0, 4], generations=2, **TINY)
    straight = ke.train(ke.Config(out=str(tmp_path / "a"), **cfg))
    original = dies_on_call(monkeypatch, StackedGenerations, "train_epoch", 3)  # generation 2, epoch 1
    with pytest.raises(KeyboardInterrupt):
        ke.train(ke.Config(out=str(tmp_path / "b"), **cfg))
    monkeypatch.setattr(StackedGenerations, "train_epoch", original)
    resumed = ke.train(ke.Config(out=str(tmp_path / "b"), resume=True, **cfg))
    assert resumed == straight
    for seed in (0, 4):
        assert _lines(tmp_path / "a" / f"seed-{seed}" / "metrics.jsonl") == \
            _lines(tmp_path / "b" / f"seed-{seed}" / "metrics.jsonl")


def test_stacked_run_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        validate_config(ke.Config(seeds=[1, 1]))
    with pytest.raises(ConfigError, match="seeds must be int"):
        validate_config(ke.Config(seeds=[1, "a"]))
    ke.train(ke.Config(out=str(tmp_path / "run"), seeds=[0, 1], generations=1, **TINY))
    with pytest.raises(CheckpointError, match="already holds a run"):
        ke.train(ke.Config(out=str(tmp_path / "run"), seeds=[0, 1], generations=1, **TINY))
    with pytest.raises(CheckpointError, match="config"):
        ke.train(ke.Config(out=str(tmp_path / "run"), seeds=[0, 2], generations=1, resume=True, **TINY))


def test_stacked_seeds_compose_with_compile(tmp_path, monkeypatch):
    """--seeds --compile: the vmapped step compiles as one graph (fullgraph) and trains as eager
    (aot_eager: the same graphs without code generation, so the numbers are eager's to rounding)."""
    from fastsmall.methods.common import speed
    monkeypatch.setattr(speed.StepSpeed, "backend", "aot_eager")
    cfg = dict(seeds=[0, 1], generations=2, **TINY)
    ke.train(ke.Config(out=str(tmp_path / "eager"), **cfg))
    ke.train(ke.Config(out=str(tmp_path / "compiled"), compile=True, **cfg))
    assert_seed_runs_close(tmp_path / "eager", tmp_path / "compiled", (0, 1), rel=1e-4, abs=1e-5)


def test_cli_prints_the_aggregate(tmp_path, capsys):
    from fastsmall.methods.ke.__main__ import main
    args = ["--generations", "1", "--epochs", "2", "--warmup-epochs", "1", "--per-class", "6", "--width", "8",
            "--batch-size", "16", "--quiet", "--out", str(tmp_path / "run")]
    assert_cli_prints_seeds_table(main, args, capsys, (2, 5), "test_accuracy")


def test_ke_experiment_stacked_is_the_sequential_experiment(tmp_path, float64):
    """The documented experiment's runner stacks each run's seeds by default: per (run, seed) the
    same summary as the single-seed runs one after another (float64: to 1e-10)."""
    from fastsmall.methods.ke import experiment
    base = ke.Config(generations=2, **TINY)
    stacked = experiment.run(tmp_path / "stacked", [0, 3], base, stacked=True)
    sequential = experiment.run(tmp_path / "sequential", [0, 3], base, stacked=False)
    assert stacked.keys() == sequential.keys() and len(stacked) == 2 * len(experiment.RUNS)
    for key, a in stacked.items():
        b = sequential[key]
        for g_a, g_b in zip(a["per_generation"], b["per_generation"]):
            for k, v in g_a.items():
                assert v == pytest.approx(g_b[k], abs=1e-10), (key, k)
    assert (tmp_path / "stacked" / "ke-kels-seeds" / "seed-3" / "metrics.jsonl").is_file()


def test_torchrun_splits_the_seeds_over_processes(tmp_path):
    """torchrun, 2 processes, 3 seeds: rank 0 stacks seeds [0, 2], rank 1 seed [1], each alone;
    every seed's directory is its single-seed run (float32 here: to float tolerance, since a stack
    of 2 rounds its grouped convolutions differently from a stack of 3) and rank 0 writes the
    aggregate over all three."""
    from pipeline_helpers import ROOT, cli_env
    args = ["--seeds", "0", "1", "2", "--generations", "2"] + [
        a for k, v in TINY.items() if k != "quiet" for a in (f"--{k.replace('_', '-')}", str(v))] + ["--quiet"]
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastsmall.methods.ke", *args, "--out", str(out)],
                          env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (out / "checkpoints").glob("rank*.pt") if ".prev" not in p.name)
    assert names == ["rank0-of-2.pt", "rank1-of-2.pt"]  # one checkpoint per process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["metrics"]["test_accuracy"]["n"] == 3
    ke.train(ke.Config(out=str(tmp_path / "one"), seeds=[0, 1, 2], generations=2, **TINY))
    for seed in (0, 1, 2):
        a = _lines(out / f"seed-{seed}" / "metrics.jsonl")
        b = _lines(tmp_path / "one" / f"seed-{seed}" / "metrics.jsonl")
        assert len(a) == len(b)
        for ra, rb in zip(a, b):
            key = "loss" if ra["type"] == "epoch" else "train_loss"
            assert ra[key] == pytest.approx(rb[key], rel=1e-4), (seed, ra)
    too_many = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "fastsmall.methods.ke", "--seeds", "7", "--out", str(tmp_path / "x")],
                              env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert too_many.returncode != 0 and "every process needs at least one seed" in too_many.stdout + too_many.stderr


def test_single_and_stacked_run_directories_are_not_mixed_up(tmp_path):
    """--resume of a stacked run directory as a single-seed run (and the reverse) is refused with
    the checkpoint's method named, never a silent restart or a wrong load."""
    ke.train(ke.Config(out=str(tmp_path / "single"), seed=0, generations=1, **TINY))
    with pytest.raises(CheckpointError, match="expected 'ke-seeds'"):
        ke.train(ke.Config(out=str(tmp_path / "single"), seeds=[0, 1], generations=1, resume=True, **TINY))
    ke.train(ke.Config(out=str(tmp_path / "stacked"), seeds=[0, 1], generations=1, **TINY))
    with pytest.raises(CheckpointError, match="expected 'ke'"):
        ke.train(ke.Config(out=str(tmp_path / "stacked"), seed=0, generations=1, resume=True, **TINY))
