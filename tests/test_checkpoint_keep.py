"""``--keep N`` (issue 16): how many checkpoints a run keeps in OUT/checkpoints/.

``last.pt`` is always the newest; ``prev.pt``, ``prev-2.pt``, ... ``prev-<N-1>.pt`` are the ones
written before it, newest first (every checkpoint a method writes counts: epoch and generation
ends alike). The default, 2, is what runs kept before the option existed (``last.pt`` + ``prev.pt``);
``--keep 1`` keeps ``last.pt`` alone. A bad value is one line naming ``--keep``. A resume loads
``last.pt``, or the newest intact earlier one when it is corrupt, and ends bit for bit as an
uninterrupted run; ``--keep`` may change on resume (it changes no result).
"""
from __future__ import annotations


import pytest

from fastsmall.methods import crest, dsd, ke, poseaug
from fastsmall.methods.common import CheckpointError, ConfigError, load_checkpoint, save_checkpoint, validate_config
from fastsmall.methods.common.checkpoint import (earlier_checkpoints, has_checkpoint, load_latest_checkpoint,
                                                 previous_path)
from fastsmall.methods.common.generations import GenerationTrainer
from pipeline_helpers import (CREST_TINY, DSD_TINY, KE_TINY, POSEAUG_TINY, as_args, dies_on_call,  # noqa: F401
                              one_thread, records, run_main, strip_times)

pytestmark = pytest.mark.usefixtures("one_thread", "no_plots")


@pytest.fixture
def no_plots(monkeypatch):
    """Plots are not what these tests check (PoseAug's per-epoch figures are most of a tiny run's time)."""
    from fastsmall.methods.common.trainer import Trainer
    from fastsmall.methods.crest.train import CReSTTrainer
    from fastsmall.methods.dsd.train import DSDTrainer
    from fastsmall.methods.ke.train import KETrainer
    from fastsmall.methods.poseaug.train import PoseAugTrainer

    for cls in (Trainer, CReSTTrainer, DSDTrainer, KETrainer, PoseAugTrainer):
        monkeypatch.setattr(cls, "plot", lambda self: None)
    monkeypatch.setattr(PoseAugTrainer, "_plot_augmentations", lambda self: None)

MODULES = {"crest": crest, "ke": ke, "dsd": dsd, "poseaug": poseaug}
TINY = {"crest": CREST_TINY, "ke": KE_TINY, "dsd": DSD_TINY, "poseaug": POSEAUG_TINY}
#: files a method writes in checkpoints/ besides the kept ones (PoseAug: its estimator for --pretrained)
EXPORTS = {"poseaug": {"estimator.pt"}}


def checkpoint_files(run) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir()}


def kept(n: int) -> set[str]:
    """The names --keep n leaves: last.pt, prev.pt, prev-2.pt, ... (n in all)."""
    return {"last.pt", *(["prev.pt"] if n >= 2 else []), *(f"prev-{k}.pt" for k in range(2, n))}


def _flip_bytes(path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- the rotation itself (no training) ----------------------------------------------------------
def test_rotation_keeps_the_latest_n_newest_first(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(6):
        save_checkpoint(path, {"i": i}, keep=3)
        assert {p.name for p in tmp_path.iterdir()} == kept(min(i + 1, 3))
    assert [load_checkpoint(p)["i"] for p in (path, previous_path(path), previous_path(path, 2))] == [5, 4, 3]
    assert earlier_checkpoints(path) == [(1, tmp_path / "prev.pt"), (2, tmp_path / "prev-2.pt")]


def test_keep_1_and_the_default(tmp_path):
    one, two, plain = tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt", tmp_path / "plain" / "x.pt"
    for i in range(3):
        save_checkpoint(one, {"i": i}, keep=1)
        save_checkpoint(two, {"i": i}, keep_previous=True)  # the old spelling of keep=2
        save_checkpoint(plain, {"i": i})  # keep=None: replaces the file, touches nothing else
    assert {p.name for p in one.parent.iterdir()} == {"last.pt"}
    assert {p.name for p in two.parent.iterdir()} == {"last.pt", "prev.pt"}
    assert load_checkpoint(previous_path(two))["i"] == 1
    assert {p.name for p in plain.parent.iterdir()} == {"x.pt"}


def test_a_smaller_keep_deletes_the_older_ones_a_larger_one_grows(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(4):
        save_checkpoint(path, {"i": i}, keep=4)
    assert {p.name for p in tmp_path.iterdir()} == kept(4)
    save_checkpoint(path, {"i": 4}, keep=2)
    assert {p.name for p in tmp_path.iterdir()} == kept(2)
    assert [load_checkpoint(p)["i"] for p in (path, previous_path(path))] == [4, 3]
    save_checkpoint(path, {"i": 5}, keep=3)
    assert [load_checkpoint(p)["i"] for p in (path, previous_path(path), previous_path(path, 2))] == [5, 4, 3]


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_kill_during_the_rotation_leaves_the_newest_complete_one(tmp_path, monkeypatch, kill_at):
    """A save with --keep 3 renames prev -> prev-2, last -> prev, new -> last: killed before any of
    them, a resume finds the newest complete checkpoint, and the next save rotates on."""
    import fastsmall.methods.common.checkpoint as checkpoint_module

    path = tmp_path / "last.pt"
    for i in range(3):
        save_checkpoint(path, {"i": i}, keep=3)
    calls, replace = {"n": 0}, checkpoint_module.os.replace

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return replace(*args)

    monkeypatch.setattr(checkpoint_module.os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"i": 3}, keep=3)
    monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file of the interrupted write is removed"
    state, used, _ = load_latest_checkpoint(path)
    assert state["i"] == 2 and used == (previous_path(path) if kill_at == 3 else path)
    for i, before in ((4, 2), (5, 4)):  # (the killed save of 3 never happened)
        save_checkpoint(path, {"i": i}, keep=3)
        held = [load_checkpoint(p)["i"] for p in (path, *(q for _, q in earlier_checkpoints(path)))]
        assert held[:2] == [i, before] and held == sorted(held, reverse=True), held
    assert {p.name for p in tmp_path.iterdir()} == kept(3)  # (a gap left by the kill is closed)


def test_a_huge_keep_costs_nothing_more(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(3):
        save_checkpoint(path, {"i": i}, keep=10 ** 9)  # only the files that exist are renamed
    assert {p.name for p in tmp_path.iterdir()} == kept(3)


def test_other_checkpoint_names_rotate_beside_them(tmp_path):
    """--seeds under torchrun: one checkpoint per process, rank<r>-of-<w>.pt."""
    path = tmp_path / "rank0-of-2.pt"
    save_checkpoint(tmp_path / "last.pt", {"i": -1}, keep=3)  # another file's rotation is not this one's
    for i in range(4):
        save_checkpoint(path, {"i": i}, keep=3)
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "rank0-of-2.pt", "rank0-of-2.prev.pt",
                                                    "rank0-of-2.prev-2.pt"}
    assert [b for b, _ in earlier_checkpoints(path)] == [1, 2]
    assert earlier_checkpoints(tmp_path / "last.pt") == []


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, "2"])
def test_save_refuses_a_bad_keep_and_writes_nothing(tmp_path, keep):
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        save_checkpoint(tmp_path / "last.pt", {"i": 0}, keep=keep)
    assert list(tmp_path.iterdir()) == []


def test_load_latest_falls_back_to_the_newest_intact_one(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(4):
        save_checkpoint(path, {"i": i}, keep=4)
    _flip_bytes(path)
    _flip_bytes(previous_path(path))
    state, used, note = load_latest_checkpoint(path)
    assert state["i"] == 1 and used == previous_path(path, 2)
    assert f"checkpoint {path} is corrupt" in note and f"checkpoint {previous_path(path)} is corrupt" in note
    assert f"resuming from the earlier checkpoint {used} instead" in note
    path.unlink()  # a kill between two renames leaves no last.pt: the newest earlier one is used
    assert has_checkpoint(path) and load_latest_checkpoint(path)[0]["i"] == 1
    for back in (2, 3):  # (prev.pt is corrupt already)
        _flip_bytes(previous_path(path, back))
    with pytest.raises(CheckpointError, match="the earlier checkpoints are unusable too"):
        load_latest_checkpoint(path)


# ---- every method: the option in the CLI, the config file and the Python API ---------------------


@pytest.mark.parametrize("method", list(MODULES))
def test_cli_keep_3_keeps_the_three_latest_by_recency(method, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_main(method, [*as_args(TINY[method]), "--keep", "3", "--out", run], capsys)
    assert code == 0, err
    assert checkpoint_files(run) == kept(3) | EXPORTS.get(method, set())
    lines = [load_checkpoint(run / "checkpoints" / name)["metrics_lines"] for name in ("last.pt", "prev.pt", "prev-2.pt")]
    assert lines[0] == len(records(run)) and lines[0] >= lines[1] >= lines[2], lines
    assert lines[0] > lines[2], "prev-2.pt is an earlier point of the run than last.pt"


@pytest.mark.parametrize("method", list(MODULES))
def test_api_keep_1_keeps_only_last(method, tmp_path):
    run = tmp_path / "run"
    MODULES[method].train(MODULES[method].Config(out=str(run), keep=1, **TINY[method]))
    assert checkpoint_files(run) == {"last.pt"} | EXPORTS.get(method, set())


def test_the_default_keeps_last_and_prev(tmp_path):
    run = tmp_path / "run"
    ke.train(ke.Config(out=str(run), **KE_TINY))
    assert ke.Config().keep == crest.Config().keep == dsd.Config().keep == poseaug.Config().keep == 2
    assert checkpoint_files(run) == {"last.pt", "prev.pt"}


def test_config_file_sets_keep(tmp_path, capsys):
    settings = tmp_path / "settings.toml"
    settings.write_text("keep = 4\n")
    code, out, _ = run_main("dsd", ["--config", settings, "--print-config"], capsys)
    assert code == 0 and "keep = 4" in out.splitlines()
    settings.write_text("keep = 1.5\n")
    code, _, err = run_main("dsd", ["--config", settings, "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.strip() == "fastsmall dsd: error: --keep must be int, got 1.5"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,value,message", [
    ("crest", "0", "--keep must be >= 1, got 0"),
    ("ke", "-1", "--keep must be >= 1, got -1"),
    ("dsd", "1.5", "argument --keep: invalid int value: '1.5'"),
    ("poseaug", "two", "argument --keep: invalid int value: 'two'"),
    ("poseaug-baseline", "0", "--keep must be >= 1, got 0"),
])
def test_bad_keep_is_one_line_exit_2_nothing_written(method, value, message, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = TINY[method.split("-")[0]]
    code, _, err = run_main(method, [*as_args(tiny), "--keep", value, "--out", run], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"fastsmall {method}: error: {message}"], err
    assert list(tmp_path.iterdir()) == []


def test_python_api_bad_keep_names_the_field():
    for value, message in ((0, "keep must be >= 1, got 0"), (2.0, "keep must be int, got 2.0"),
                           (True, "keep must be int, got True")):
        with pytest.raises(ConfigError, match=message) as err:
            validate_config(crest.Config(keep=value))
        assert err.value.fields == ("keep",)


# ---- resume after rotation: bit for bit ---------------------------------------------------------
def _ke(out, **changes):
    return ke.Config(out=str(out), **{**KE_TINY, "generations": 3, **changes})


def test_resume_from_the_third_newest_when_two_are_corrupt(tmp_path, capsys):
    """--keep 3, a killed run whose last.pt and prev.pt are both corrupt: it resumes from
    prev-2.pt, says so, and ends with exactly the uninterrupted run's results and metrics."""
    straight = ke.train(_ke(tmp_path / "straight"))
    run = tmp_path / "run"
    ke.train(_ke(run, keep=3))
    ckpt = run / "checkpoints"
    assert load_checkpoint(ckpt / "prev-2.pt")["metrics_lines"] < load_checkpoint(ckpt / "prev.pt")["metrics_lines"]
    _flip_bytes(ckpt / "last.pt")
    _flip_bytes(ckpt / "prev.pt")
    (run / "summary.json").unlink()
    capsys.readouterr()
    resumed = ke.train(_ke(run, keep=3, resume=True))
    assert f"resuming from the earlier checkpoint {ckpt / 'prev-2.pt'} instead" in capsys.readouterr().out
    assert resumed == straight
    assert strip_times(records(run)) == strip_times(records(tmp_path / "straight"))


def test_resume_with_another_keep_is_bitwise_and_applies_it(tmp_path, monkeypatch):
    """Killed mid-run with --keep 3, resumed with --keep 1 (keep is not part of the config a resume
    must match): the uninterrupted run's results, and the older checkpoints are gone."""
    straight = ke.train(_ke(tmp_path / "straight"))
    run = tmp_path / "run"
    original = dies_on_call(monkeypatch, GenerationTrainer, "train_epoch", 4)  # generation 2, epoch 2
    with pytest.raises(KeyboardInterrupt):
        ke.train(_ke(run, keep=3))
    monkeypatch.setattr(GenerationTrainer, "train_epoch", original)
    assert checkpoint_files(run) == kept(3)
    resumed = ke.train(_ke(run, keep=1, resume=True))
    assert resumed == straight
    assert strip_times(records(run)) == strip_times(records(tmp_path / "straight"))
    assert checkpoint_files(run) == {"last.pt"}


def test_stacked_seeds_keep(tmp_path):
    """--seeds: the one checkpoint of all replicas rotates the same way; seed folders hold none."""
    run = tmp_path / "run"
    ke.train(ke.Config(out=str(run), seeds=[0, 1], keep=3, **KE_TINY))
    assert checkpoint_files(run) == kept(3)
    assert all(checkpoint_files(run / f"seed-{s}") == set() for s in (0, 1))
