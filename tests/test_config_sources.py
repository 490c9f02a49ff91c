"""Where a run's config comes from (``common/config_files.py``): ``--config FILE`` (TOML / JSON /
YAML) under the typed flags, ``--print-config`` (TOML that ``--config`` reads back), ``--version``,
and ``--resume`` from the run's own ``config.json`` (only the volatile fields may change; any other
differing flag is one error naming it with both values). Table-driven over every method's CLI."""
import importlib
import json

import pytest

from fastsmall.methods.common.checkpoint import config_difference
from fastsmall.methods.common.config import ConfigError
from fastsmall.methods.common.config_files import read_config_file, to_toml
from pipeline_helpers import CREST_TINY_ARGS, DSD_TINY_ARGS, KE_TINY_ARGS, POSEAUG_TINY_ARGS, one_thread  # noqa: F401

# (command, main module, tiny flags, Config class)
METHODS = [
    ("crest", "fastsmall.methods.crest.__main__", CREST_TINY_ARGS, "fastsmall.methods.crest:Config"),
    ("ke", "fastsmall.methods.ke.__main__", KE_TINY_ARGS, "fastsmall.methods.ke:Config"),
    ("dsd", "fastsmall.methods.dsd.__main__", DSD_TINY_ARGS, "fastsmall.methods.dsd:Config"),
    ("poseaug", "fastsmall.methods.poseaug.__main__", POSEAUG_TINY_ARGS, "fastsmall.methods.poseaug:Config"),
]
each_method = pytest.mark.parametrize("name, module, tiny, config", METHODS, ids=[m[0] for m in METHODS])


def config_cls(path):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def call(module, argv, capsys):
    """(exit code, stdout, stderr) of the CLI's main(argv)."""
    capsys.readouterr()
    try:
        code = importlib.import_module(module).main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@each_method
def test_version(name, module, tiny, config, capsys):
    code, out, _ = call(module, ["--version"], capsys)
    assert code == 0 and out.startswith("fastsmall ")


def test_top_level_version(capsys):
    from fastsmall import __version__
    from fastsmall.cli import main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastsmall {__version__}"


@each_method
def test_print_config_round_trips_through_config(name, module, tiny, config, tmp_path, capsys):
    code, first, _ = call(module, ["--print-config", "--epochs", "3", "--out", tmp_path / "run"], capsys)
    assert code == 0 and "epochs = 3" in first
    assert not (tmp_path / "run").exists()  # printing the config writes nothing
    path = tmp_path / "settings.toml"
    path.write_text(first)
    code, second, _ = call(module, ["--print-config", "--config", path], capsys)
    assert code == 0 and second == first
    values = read_config_file(path, config_cls(config))
    assert values["epochs"] == 3


@each_method
def test_typed_flags_override_the_config_file(name, module, tiny, config, tmp_path, capsys):
    path = tmp_path / "settings.toml"
    path.write_text(f'epochs = 4\nseed = 7\n[{name}]\nquiet = true\n')
    code, out, _ = call(module, ["--print-config", "--config", path, "--seed", "3"], capsys)
    assert code == 0
    assert "epochs = 4" in out and "seed = 3" in out and "quiet = true" in out


@pytest.mark.parametrize("text, suffix, message", [
    ("epochs = 4\nno_such_flag = 1\n", ".toml", "unknown setting 'no_such_flag'"),
    ("epochs = = 4\n", ".toml", "settings.toml"),
    ('{"epochs": 4,}', ".json", "settings.json"),
    ("epochs: 4\n", ".ini", "expected a .toml, .json or .yaml file"),
    ("[1, 2]", ".json", "expected a table of settings"),
])
def test_bad_config_file_is_one_line_naming_it(text, suffix, message, tmp_path, capsys):
    path = tmp_path / f"settings{suffix}"
    path.write_text(text)
    code, _, err = call("fastsmall.methods.ke.__main__", ["--config", path, "--out", tmp_path / "run"], capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_bad_value_in_it(tmp_path, capsys):
    code, _, err = call("fastsmall.methods.ke.__main__", ["--config", tmp_path / "nope.toml"], capsys)
    assert code == 2 and "nope.toml" in err
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"epochs": 0}))
    code, _, err = call("fastsmall.methods.ke.__main__", ["--config", path, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "--epochs must be >= 1" in err


def test_yaml_config(tmp_path, capsys):
    pytest.importorskip("yaml", reason="PyYAML is optional: --config reads YAML only when it is installed")
    path = tmp_path / "settings.yaml"
    path.write_text("epochs: 5\nlr: 0.5\n")
    code, out, _ = call("fastsmall.methods.ke.__main__", ["--print-config", "--config", path], capsys)
    assert code == 0 and "epochs = 5" in out and "lr = 0.5" in out


@each_method
def test_resume_reads_the_runs_own_config(name, module, tiny, config, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, first, _ = call(module, [*tiny, "--out", out], capsys)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # only --resume and --out (plus a volatile flag): the run's config.json supplies the rest
    code, again, err = call(module, ["--resume", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert f"resuming the run in {out} with its own config" in err
    assert "resuming from" in again
    assert json.loads((out / "summary.json").read_text()) == summary
    # a non-volatile flag that differs is one error naming it with both values; nothing changes
    saved = json.loads((out / "config.json").read_text())
    code, _, err = call(module, ["--resume", "--out", out, "--epochs", str(saved["epochs"] + 1)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--epochs {saved['epochs'] + 1} (the run has {saved['epochs']})" in err
    assert json.loads((out / "config.json").read_text()) == saved
    # the same value again is fine
    code, _, err = call(module, ["--resume", "--out", out, "--epochs", str(saved["epochs"])], capsys)
    assert code == 0, err


def test_checkpoint_mismatch_names_the_fields():
    saved = json.dumps({"epochs": 20, "lr": 0.1, "seed": 0})
    current = json.dumps({"epochs": 25, "lr": 0.1, "seed": 0, "extra": True})
    text = config_difference(saved, current)
    assert "--epochs 20 (checkpoint) vs 25 (this run)" in text and "--extra" in text and "--lr" not in text
    assert config_difference("not json", "{}") == "'not json' vs '{}'"


def test_to_toml_writes_every_field_and_reads_back(tmp_path):
    cls = config_cls("fastsmall.methods.crest:Config")
    cfg = cls(seeds=[1, 2], lr=0.25)
    text = to_toml(cfg)
    assert "seeds = [1, 2]" in text and "lr = 0.25" in text and "resume" not in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    values = read_config_file(path, cls)
    assert cls(**values) == cfg
    with pytest.raises(ConfigError, match="unknown setting"):
        path.write_text("bogus = 1\n")
        read_config_file(path, cls)


def test_run_files_follow_the_users_umask(tmp_path):
    """config.json, summary.json and checkpoints are written atomically through mkstemp (mode 0600);
    they end with the mode a plain open() would give under the user's umask."""
    import os

    from fastsmall.methods.common.checkpoint import save_checkpoint
    from fastsmall.methods.common.rundir import RunDir
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "run")
        run.create()
        run.write_summary({"a": 1})
        save_checkpoint(run.checkpoint_path, {"x": 1})
        for path in (tmp_path / "run" / "summary.json", run.checkpoint_path):
            assert (path.stat().st_mode & 0o777) == 0o644, path
    finally:
        os.umask(old)
