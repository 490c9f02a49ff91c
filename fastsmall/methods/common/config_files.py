"""Where a method's config comes from besides its flags: a config file (``--config FILE``), the
run's own ``config.json`` on ``--resume``, and ``--print-config``'s output.

Precedence, lowest first: the Config's defaults, ``--config FILE``, the flags typed on the command
line. With ``--resume`` the run's ``out/config.json`` is the config; a file or flag may only change
the fields a resumed run may change (:data:`trainer.VOLATILE_FIELDS`: ``--quiet``, ``--device``,
...), and a different value for any other field is an error naming each such flag with both values.

Config files are TOML (read with the standard library's ``tomllib``), JSON, or YAML when PyYAML is
installed; keys are the flag names without ``--`` (``epochs``, ``da-window`` or ``da_window``), at
the top level or under a table named after the method (``[ke]``). ``--print-config`` prints the
whole resolved config as TOML, which ``--config`` reads back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

from .config import ConfigError

SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def _normalise(data: dict, names: set[str], path, method: str | None) -> dict:
    if method is not None and isinstance(data.get(method), dict):
        data = {**{k: v for k, v in data.items() if k != method}, **data[method]}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{path}: unknown setting {key!r} (not a flag of this command)")
        out[name] = value
    return out


def read_config_file(path, config_cls, method: str | None = None) -> dict:
    """``{field: value}`` from a TOML / JSON / YAML file; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"--config: {path}: expected a .toml, .json or .yaml file")
    text = path.read_text()
    try:
        if suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"--config: {path}: reading YAML needs PyYAML (pip install pyyaml); "
                                  "or write the file as TOML") from None
            data = yaml.safe_load(text)  # safe_load: plain data only, never Python objects
    except ConfigError:
        raise
    except Exception as exc:  # the parsers' own errors say the line
        raise ConfigError(f"--config: {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path}: expected a table of settings, got {type(data).__name__}")
    return _normalise(data, {f.name for f in dataclasses.fields(config_cls)}, path, method)


def explicit_fields(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options typed in ``argv`` (not those left at their defaults)."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for action in parser._actions:
            action.default = saved[action.dest]
    return set(vars(given))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(out, config_cls, requested: dict, volatile: Sequence[str]) -> dict:
    """The resumed run's values: ``out/config.json`` with the ``requested`` (file / typed) values of
    the volatile fields applied. A requested value of any other field that differs from the run's is
    a :class:`ConfigError` naming each such flag with both values."""
    path = Path(out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: cannot read the run's config {path}: {exc}") from None
    names = {f.name for f in dataclasses.fields(config_cls)}
    if not isinstance(saved, dict) or set(saved) - names:
        unknown = sorted(set(saved) - names) if isinstance(saved, dict) else "not a table"
        raise ConfigError(f"--resume: {path} is not a config of this command ({unknown})")
    differ = [name for name, value in requested.items()
              if name not in volatile and name in saved and not _same(value, saved[name])]
    if differ:
        detail = "; ".join(f"{flag(n)} {requested[n]!r} (the run has {saved[n]!r})" for n in sorted(differ))
        allowed = ", ".join(flag(n) for n in volatile if n in names)
        raise ConfigError(f"--resume: {detail}. A resumed run keeps its config ({path}); only {allowed} "
                          "may change. Leave those flags out, or start a new run in another --out")
    return {**saved, **{n: v for n, v in requested.items() if n in volatile}}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg, *, skip: Sequence[str] = ("resume",)) -> str:
    """The config as TOML, one ``name = value`` line per field (unset optional fields as comments)."""
    lines = []
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        if value is None:
            lines.append(f"# {f.name} = (not set)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
