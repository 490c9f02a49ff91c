"""The shared method layer: config validation and CLI, run directory, checkpoints, RNG state."""
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
