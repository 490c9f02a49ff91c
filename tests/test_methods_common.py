"""The shared method layer: config validation and CLI (common/cli.py too), run directory, checkpoints, RNG state."""
import argparse
import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from fastsmall.methods.common import (CheckpointError, ConfigError, RunDir, add_config_arguments,
                                      config_from_args, get_rng_state, load_checkpoint, save_checkpoint,
                                      seed_everything, set_rng_state, validate_config)
from fastsmall.methods.common import cli as common_cli
from fastsmall.methods.common.finite import NonFiniteLossError


@dataclasses.dataclass
class ToyConfig:
    lr: float = dataclasses.field(default=0.03, metadata={"help": "learning rate", "min": 0.0})
    epochs: int = dataclasses.field(default=3, metadata={"min": 1})
    mode: str = dataclasses.field(default="a", metadata={"choices": ["a", "b"]})
    tags: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    plus: bool = False
    out: str | None = None

    def validate(self):
        if self.mode == "b" and self.epochs < 2:
            raise ConfigError("epochs must be >= 2 when mode is 'b'")


def test_cli_is_generated_from_the_config():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig)
    cfg = config_from_args(ToyConfig, parser.parse_args(["--lr", "0.1", "--mode", "b", "--tags", "3", "4", "--plus"]))
    assert cfg == ToyConfig(lr=0.1, mode="b", tags=[3, 4], plus=True)
    assert config_from_args(ToyConfig, parser.parse_args([])) == ToyConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


@pytest.mark.parametrize("changes, message", [
    (dict(lr=-1.0), "lr must be >= 0.0"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(epochs="3"), "epochs must be int"),
    (dict(mode="z"), "mode must be one of"),
    (dict(mode="b", epochs=1), "epochs must be >= 2 when mode is 'b'"),
    (dict(tags=3), "tags must be a list of int"),
])
def test_bad_config_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(dataclasses.replace(ToyConfig(), **changes))


def test_rundir_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config(ToyConfig())
    run.log_metrics({"epoch": 0, "acc": 0.5})
    run.log_metrics({"epoch": 1, "acc": 0.6})
    run.truncate_metrics(1)
    run.write_summary({"acc": 0.6})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 0.03
    assert run.read_metrics() == [{"epoch": 0, "acc": 0.5}]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"acc": 0.6}
    silent = RunDir(tmp_path / "other", writer=False)
    silent.log_metrics({"x": 1})
    assert not (tmp_path / "other").exists()


def test_checkpoints_are_atomic_and_checked(tmp_path):
    path = tmp_path / "ck.pt"
    state = {"model": {"w": torch.randn(3)}, "epoch": 4, "method": "crest"}
    save_checkpoint(path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary left behind
    loaded = load_checkpoint(path, expect={"method": "crest"})
    torch.testing.assert_close(loaded["model"]["w"], state["model"]["w"])
    with pytest.raises(CheckpointError, match="method is 'crest', expected 'ke'"):
        load_checkpoint(path, expect={"method": "ke"})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    # an object that weights_only loading refuses is reported, not executed
    torch.save({"bad": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a fastsmall checkpoint"):
        load_checkpoint(path)


def test_rng_state_round_trip(tmp_path):
    seed_everything(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's generator
    np.random.standard_normal()
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    want = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(3))
    assert got[:4] == want[:4]
    torch.testing.assert_close(got[4], want[4])


# ---- the shared CLI (fastsmall/methods/common/cli.py) ------------------------------------------------

@dataclasses.dataclass
class ImplConfig:
    impl: str = dataclasses.field(default="fused", metadata={"help": "100 % fused, or %(prog)s-free official",
                                                             "choices": ["fused", "official"],
                                                             "renamed": {"reference": "official"}})
    epochs: int = dataclasses.field(default=3, metadata={"min": 1})
    out: str = "run"


@dataclasses.dataclass
class OldImplConfig:
    impl: str = dataclasses.field(default="fused", metadata={"choices": ["fused", "reference"]})


@dataclasses.dataclass
class RenamedConfig:
    mode: str = dataclasses.field(default="a", metadata={"choices": ["a", "b"], "renamed": {"old-b": "b"}})


def _run_toy(argv, train, config_cls=ImplConfig):
    return common_cli.run(argv, name="toy", description="a toy method", config_cls=config_cls, train=train,
                          report=lambda summary, args: json.dumps(summary))


def test_cli_help_with_percent_signs(capsys):
    """A bare % in a Config's help (DSD's "30 %") must not crash --help."""
    with pytest.raises(SystemExit) as exit_:
        _run_toy(["--help"], train=None)
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "100 % fused, or %(prog)s-free official" in " ".join(out.split())


@pytest.mark.parametrize("argv", [["--impl", "reference"], ["--impl=reference"]])
def test_cli_maps_deprecated_impl_reference(argv, capsys):
    seen = []
    assert _run_toy(argv, train=lambda cfg: seen.append(cfg) or {"impl": cfg.impl}) == 0
    out, err = capsys.readouterr()
    assert seen == [ImplConfig(impl="official")] and json.loads(out) == {"impl": "official"}
    assert err == "fastsmall toy: warning: --impl reference is deprecated; use --impl official\n"


def test_cli_deprecation_only_when_the_config_has_the_new_name(capsys):
    """Before the rename (choices fused / reference) 'reference' is a value like any other; other
    flags' values are never rewritten."""
    assert common_cli.map_deprecated(["--impl", "reference"], OldImplConfig, "p") == ["--impl", "reference"]
    assert common_cli.map_deprecated(["--out", "reference"], ImplConfig, "p") == ["--out", "reference"]
    assert capsys.readouterr().err == ""


def test_cli_maps_values_a_config_field_declares_renamed(capsys):
    assert common_cli.map_deprecated(["--mode", "old-b"], RenamedConfig, "p") == ["--mode", "b"]
    assert capsys.readouterr().err == "p: warning: --mode old-b is deprecated; use --mode b\n"


@pytest.mark.parametrize("error, message", [
    (ConfigError("epochs must be >= 2 when mode is 'b'"), "epochs must be >= 2 when mode is 'b'"),
    (ConfigError("epochs must be >= 2 when mode is 'b'", fields=("epochs", "mode")),
     "--epochs must be >= 2 when --mode is 'b'"),  # the fields it names, as flags
    (NonFiniteLossError("the training loss became non-finite in epoch 3"),
     "the training loss became non-finite in epoch 3"),
    (CheckpointError("runs/x already holds a run"), "runs/x already holds a run"),
    (FileNotFoundError("/data/cameras.json is missing"), "/data/cameras.json is missing"),
    (ValueError("bad.bvh: line 1: expected HIERARCHY\n  got 'x'"), "bad.bvh: line 1: expected HIERARCHY got 'x'"),
    (KeyError("data_3d.npz has no key 'positions_3d'"), "data_3d.npz has no key 'positions_3d'"),
])
def test_cli_user_errors_are_one_line_and_exit_2(error, message, capsys, monkeypatch):
    monkeypatch.delenv("FASTSMALL_TRACEBACK", raising=False)

    def train(cfg):
        raise error

    with pytest.raises(SystemExit) as exit_:
        _run_toy([], train)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"fastsmall toy: error: {message}\n"
    monkeypatch.setenv("FASTSMALL_TRACEBACK", "1")  # for debugging: the exception itself
    with pytest.raises(type(error)):
        _run_toy([], train)


def test_cli_bad_config_value_and_programming_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        _run_toy(["--epochs", "0"], train=None)
    assert exit_.value.code == 2 and capsys.readouterr().err == "fastsmall toy: error: --epochs must be >= 1, got 0\n"

    def broken(cfg):
        raise RuntimeError("a bug, not the user's error")

    with pytest.raises(RuntimeError, match="a bug"):  # not turned into a one-line user error
        _run_toy([], broken)
