"""Method configs are dataclasses; this module validates them and builds their CLI.

Fields are declared with :func:`option` (``metadata={"help": ..., "choices": [...], "min": x,
"max": y, "renamed": {old: new}}``); a config class may define ``validate(self)`` for rules
across fields. Bad values raise :class:`ConfigError` naming the field (as Python spells it,
``epochs``; the error also lists the field names, so the command line can say ``--epochs``). Float
fields must be finite (``nan`` / ``inf`` are refused). A value listed in ``renamed`` is still
accepted, replaced by its new name with a one-line deprecation warning.

A default declared with :func:`soft_default` (an int that knows it was not chosen) may give way
when it does not fit the run: a config's ``validate`` scales it with :func:`fit_soft_default`
(e.g. KE's 5 warm-up epochs in a 1-epoch run become 0) and :func:`soft_notes` says what was chosen;
a value the user set is never changed, and a conflict with it is a ConfigError naming both fields.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import typing
import warnings
from pathlib import Path


def flag_name(field: str) -> str:
    """The command-line flag of a config field: ``warmup_epochs`` -> ``--warmup-epochs``."""
    return "--" + field.replace("_", "-")


def _with_flags(text: str, fields) -> str:
    """``text`` with every whole-word mention of one of ``fields`` replaced by its flag."""
    for name in sorted(set(fields), key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", lambda _m, n=name: flag_name(n), text)
    return text


class ConfigError(ValueError):
    """A config field has a bad value, or fields break a rule together. The message names the
    field(s) as the Python API spells them (``epochs must be >= 1, got 0``); ``fields`` lists them,
    and :meth:`cli_message` is the same message with each named by its flag (``--epochs must be
    >= 1, got 0``), which is what the command line prints."""

    def __init__(self, message: str, *, field: str | None = None, fields: typing.Sequence[str] = ()):
        super().__init__(message)
        self.fields = tuple(([field] if field else []) + [f for f in fields if f != field])

    def cli_message(self) -> str:
        return _with_flags(str(self), self.fields)


# ---- defaults that give way to the run (e.g. a warm-up longer than a short run) -------------------
class SoftInt(int):
    """An int default the user did not choose (:func:`soft_default`): it reads as its value
    everywhere (help, repr, JSON, arithmetic), but a config's ``validate`` may scale it to fit
    the run (:func:`fit_soft_default`); ``why`` says why a scaled one differs from the default."""

    why: str = ""


def soft_default(value: int) -> SoftInt:
    return SoftInt(value)


def is_soft(value) -> bool:
    """Was this value left at its (soft) default, not set by the user?"""
    return isinstance(value, SoftInt)


def fit_soft_default(cfg, name: str, at_most: int, rule: str) -> None:
    """When ``cfg.name`` holds its soft default, make it ``min(default, at_most)``, so that it fits
    the run; ``rule`` is the limit the default broke (``"must be < epochs (1)"``), for the note.
    A value the user set is left alone (a conflict is the caller's ConfigError). The result stays
    soft: a copy of ``cfg`` with another run length is fitted anew from the default."""
    if not is_soft(getattr(cfg, name)):
        return
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == name)
    chosen = SoftInt(min(int(default), at_most))
    if chosen != default:
        chosen.why = f"the default {int(default)} {rule}"
    setattr(cfg, name, chosen)


def soft_notes(cfg) -> list[str]:
    """One line per soft default that was scaled to fit the run: field, its flag, the value chosen
    and why (``warmup_epochs = 0 (--warmup-epochs 0, not given): the default 5 must be < epochs (1)``)."""
    notes = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_soft(value) and value.why:
            notes.append(f"{f.name} = {int(value)} ({flag_name(f.name)} {int(value)}, not given): "
                         f"{value.why}")
    return notes


def option(default, help: str, **meta):
    """A config field with its CLI help and checks (``choices``, ``min``, ``max``, ``renamed``)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def list_option(default, help: str, **meta):
    """A list-valued config field (``nargs="+"`` on the CLI); each instance gets its own copy."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **meta})


# ---- the run options every method has, defined once -------------------------------------------
def seeds_option(how: str = "stacked in one process"):
    """``--seeds S1 S2 ...``: many seeds in one process, stacked (``stacked.StackedRun``) or, where
    stacking does not pay, one after another (``sequential_seeds.SequentialSeeds``); ``how`` says which."""
    return list_option([], f"train one replica per seed, {how}, each exactly its own single-seed "
                           "run (out/seed-S/), and report mean, std and a 95 % interval over them "
                           "(out/summary.json); replaces --seed", distinct=True)


def impl_option(what: str):
    """``--impl fused|official`` (``reference``, its old name, still accepted); ``what`` says which
    steps the choice covers and where the official version lives."""
    return option("fused", f"{what}: fastsmall's fused ops, or the released code's arithmetic",
                  choices=["fused", "official"], renamed={"reference": "official"})


def check_device(value: str) -> str | None:
    """What is wrong with a ``device`` value on this machine (None: nothing): cpu, cuda or cuda:N,
    and a CUDA device must exist -- checked before a run writes anything."""
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", value)
    if m is None:
        return f"must be cpu, cuda or cuda:N, got {value!r}"
    if value == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{value}: this machine has no usable CUDA GPU (torch.cuda.is_available() is False)"
    count = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= count:
        return f"{value}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}"
    return None


def device_option():
    return option("cpu", "cpu, cuda or cuda:N", check=check_device)


def dist_timeout_option():
    return option(600.0, "torchrun: seconds a process waits for the others in a collective before the run stops "
                         "with an error (a stopped or stuck rank)", min=1.0)


def resume_option():
    return option(False, "continue the run in --out from its last checkpoint")


def keep_option():
    """``--keep N``: checkpoints kept in OUT/checkpoints/ (``checkpoint.save_checkpoint``'s ``keep``)."""
    return option(2, "checkpoints kept in OUT/checkpoints/, newest first: last.pt, prev.pt, prev-2.pt, ... (this "
                     "many in all; the oldest is deleted as a new one is written); 1: last.pt only. A resume "
                     "falls back to the newest intact one when last.pt is corrupt", min=1)


def tensorboard_option():
    return option(False, "also write TensorBoard event files to OUT/tensorboard/ (needs the tensorboard package)")


def quiet_option():
    return option(False, "no progress bars")


def _apply_renames(cfg, f) -> None:
    renamed = f.metadata.get("renamed", {})
    value = getattr(cfg, f.name)
    if isinstance(value, str) and value in renamed:
        new = renamed[value]
        warnings.warn(f"{f.name}={value!r} is deprecated; use {new!r} (--{f.name.replace('_', '-')} {new})",
                      FutureWarning, stacklevel=3)
        setattr(cfg, f.name, new)


def _base_type(tp):
    """(python type, is_optional, is_list) of a field annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    optional = False
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) != len(args)
        tp = non_none[0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        return args[0], optional, True
    return tp, optional, False


def validate_config(cfg) -> None:
    """Type, range and choice checks of every field (floats must be finite), then the class's own
    ``validate``. Every ConfigError names its field(s) (``ConfigError.fields``)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _apply_renames(cfg, f)
        value = getattr(cfg, f.name)
        tp, optional, is_list = _base_type(hints[f.name])
        name = f.name
        if value is None:
            if not optional:
                raise ConfigError(f"{name} must be set (got None)", field=name)
            continue
        items = value if is_list else [value]
        if is_list and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list of {tp.__name__}, got {value!r}", field=name)
        if is_list and f.metadata.get("distinct") and len(set(map(repr, items))) != len(items):
            raise ConfigError(f"{name} must be distinct, got {list(items)}", field=name)
        for item in items:
            if tp is float and isinstance(item, int) and not isinstance(item, bool):
                continue
            if tp in (int, float, str, bool) and (not isinstance(item, tp) or (tp is int and isinstance(item, bool))):
                raise ConfigError(f"{name} must be {tp.__name__}, got {item!r}", field=name)
            if tp is float and not math.isfinite(item):  # (nan passes every min / max comparison)
                raise ConfigError(f"{name} must be a finite number, got {item!r}", field=name)
            meta = f.metadata
            if "choices" in meta and item not in meta["choices"]:
                raise ConfigError(f"{name} must be one of {list(meta['choices'])}, got {item!r}", field=name)
            if "min" in meta and item < meta["min"]:
                raise ConfigError(f"{name} must be >= {meta['min']}, got {item!r}", field=name)
            if "max" in meta and item > meta["max"]:
                raise ConfigError(f"{name} must be <= {meta['max']}, got {item!r}", field=name)
            problem = meta["check"](item) if "check" in meta else None
            if problem:
                raise ConfigError(f"{name} {problem}", field=name)
    if hasattr(cfg, "validate"):
        cfg.validate()


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One ``--field-name`` option per field, typed, with the field's default and help."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, optional, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        kwargs = dict(dest=f.name, default=default, help=help_text, type=tp)
        if is_list:
            kwargs["nargs"] = "+"
        if "choices" in f.metadata:  # old names parse too; validate_config maps them
            kwargs["choices"] = list(f.metadata["choices"]) + list(f.metadata.get("renamed", {}))
        parser.add_argument(flag, **kwargs)


def config_from_args(config_cls, args: argparse.Namespace):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    cfg = config_cls(**values)
    validate_config(cfg)
    return cfg


def config_fingerprint(cfg, volatile=("resume", "quiet", "out", "device"), **extra) -> str:
    """The config as a canonical JSON string without the fields that may change between a run
    and its resumption; checkpoints store it and a resume must match it."""
    fields = dataclasses.asdict(cfg)
    for name in volatile:
        fields.pop(name, None)
    return json.dumps({**fields, **extra}, sort_keys=True)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_json(config_cls, path: Path):
    data = json.loads(Path(path).read_text())
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown config fields {unknown}")
    cfg = config_cls(**data)
    validate_config(cfg)
    return cfg
