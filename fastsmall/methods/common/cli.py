"""The command line every method shares (``python -m fastsmall.methods.<m>``, ``fastsmall <m>``).

:func:`run` builds the parser from the method's Config dataclass, parses, validates, trains
and prints the method's result; each method's ``__main__`` only says what is its own (the
description, the result table, extra flags). User errors end the command the way argparse's
own do: one line on stderr, ``fastsmall <m>: error: <message>``, exit status 2, no traceback:

* argparse's own: a value of the wrong type (``--keep 1.5``), an unknown flag;
* :class:`ConfigError`: a bad value, or a rule across fields (each Config's ``validate``), an
  ``--out`` that is not a directory, a ``--device`` this machine does not have -- all checked
  before anything is written; the message names the flags (``--epochs must be >= 1, got 0``);
* :class:`CheckpointError`: a corrupt or mismatched checkpoint, a run directory that already
  holds a run;
* the data loaders' ``FileNotFoundError`` / ``ValueError`` / ``KeyError``, whose messages name
  the file (and the key);
* :class:`NonFiniteLossError`: the training loss became NaN or infinite (the epoch is named; the
  last checkpoint is the last good one);
* :class:`DistributedTimeout`: under torchrun, another process stopped responding.

``FASTSMALL_TRACEBACK=1`` in the environment re-raises them instead, for debugging.

Deprecated values -- those a field declares in its metadata as ``renamed={old: new}``, such as
``--impl reference`` for ``--impl official`` -- are rewritten in argv before parsing, with a
one-line warning on stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from .checkpoint import CheckpointError
from .config import ConfigError, add_config_arguments, config_from_args
from .config_files import explicit_fields, read_config_file, resume_config, to_toml
from .distributed import DistributedTimeout
from .finite import NonFiniteLossError

#: errors that are the user's (bad flags, files, checkpoints, a diverged run) or a stuck process, reported in one line
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError, KeyError, NonFiniteLossError,
               DistributedTimeout)

class _EscapePercent:
    """Hands ``add_argument`` calls to a parser with ``%`` in help texts escaped as ``%%``.

    argparse %-formats every help string (``%(default)s``); a config's help such as
    "DSD's 30 %" would crash ``--help``. Config help texts are plain text, so every lone
    ``%`` is literal (an already escaped ``%%`` stays as it is).
    """

    def __init__(self, parser: argparse.ArgumentParser):
        self._parser = parser

    def add_argument(self, *args, **kwargs):
        if isinstance(kwargs.get("help"), str):
            kwargs["help"] = re.sub(r"%%|%", "%%", kwargs["help"])
        return self._parser.add_argument(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)


class _OneLineErrors(argparse.ArgumentParser):
    """argparse's own errors -- a value of the wrong type (``--keep 1.5``: ``argument --keep: invalid
    int value: '1.5'``), an unknown flag -- in the one-line form every other user error takes
    (argparse would print its usage block first); ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(prog: str, description: str, config_cls,
                 add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """One ``--field-name`` option per Config field (help-safe), then the method's own flags."""
    parser = _OneLineErrors(prog=prog, description=description)
    add_config_arguments(_EscapePercent(parser), config_cls)
    if add_arguments is not None:
        add_arguments(parser)
    return parser


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--print-config`` and ``--version``, the same on every method."""
    from ... import __version__
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="read settings from a TOML / JSON / YAML file (keys: the flag names); flags typed "
                             "on the command line override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the full resolved config as TOML (readable by --config) and exit")
    parser.add_argument("--version", action="version", version=f"fastsmall {__version__}")


def apply_sources(parser, argv, args, config_cls, method: str, prog: str) -> None:
    """Fold ``--config FILE`` and, on ``--resume``, the run's own ``config.json`` into ``args``
    (precedence and the resume rule: ``config_files``); says where a resumed run's config comes from."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    typed = explicit_fields(parser, argv) & names
    requested = read_config_file(args.config, config_cls, method) if args.config else {}
    requested.update({n: getattr(args, n) for n in typed})
    out = requested.get("out", getattr(args, "out", None))
    resume = requested.get("resume", getattr(args, "resume", False))
    if resume and out and (Path(out) / "config.json").is_file():
        from .trainer import VOLATILE_FIELDS
        values = resume_config(out, config_cls, requested, VOLATILE_FIELDS)
        print(f"{prog}: resuming the run in {out} with its own config ({Path(out) / 'config.json'})",
              file=sys.stderr, flush=True)
    else:
        values = requested
    for n, v in values.items():
        setattr(args, n, v)


def _renamed_values(config_cls):
    """(field, old, new) for every deprecated value whose new name is among the field's choices."""
    out = []
    for f in dataclasses.fields(config_cls):
        renamed = f.metadata.get("renamed", {})
        choices = f.metadata.get("choices") or ()
        out += [(f.name, old, new) for old, new in renamed.items() if new in choices and old not in choices]
    return out


def map_deprecated(argv: Sequence[str], config_cls, prog: str, *, stream=None) -> list[str]:
    """argv with deprecated values replaced by their new names, when the Config knows the new
    name (so this works before and after a rename); one warning line per replacement."""
    stream = sys.stderr if stream is None else stream
    argv = list(argv)
    for name, old, new in _renamed_values(config_cls):
        flag = "--" + name.replace("_", "-")
        for i, arg in enumerate(argv):
            if arg == "--":
                break
            if arg == f"{flag}={old}":
                argv[i] = f"{flag}={new}"
            elif arg == flag and i + 1 < len(argv) and argv[i + 1] == old:
                argv[i + 1] = new
            else:
                continue
            print(f"{prog}: warning: {flag} {old} is deprecated; use {flag} {new}", file=stream, flush=True)
    return argv


def error_message(exc: BaseException) -> str:
    """The exception as one line (a KeyError's message without the quotes str() adds; a ConfigError's
    with its fields named by their flags, ``--epochs`` for ``epochs``)."""
    if isinstance(exc, ConfigError):
        text = exc.cli_message()
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def run(argv: Sequence[str] | None, *, name: str, description: str, config_cls, train: Callable,
        report: Callable[[dict, argparse.Namespace], str],
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        adjust: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``config_cls``, ``train(cfg)``, print
    ``report(summary, args)``; returns 0. ``adjust`` may change the parsed flags before the
    Config is built (e.g. a sub-command that fixes some fields)."""
    prog = f"fastsmall {name}"
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(prog, description, config_cls, add_arguments)
    add_source_arguments(parser)
    argv = map_deprecated(argv, config_cls, prog)
    args = parser.parse_args(argv)
    try:
        if adjust is not None:
            adjust(args)
        apply_sources(parser, argv, args, config_cls, name, prog)
        cfg = config_from_args(config_cls, args)
        if args.print_config:
            print(to_toml(cfg), end="", flush=True)
            return 0
        summary = train(cfg)
    except USER_ERRORS as exc:
        if os.environ.get("FASTSMALL_TRACEBACK"):
            raise
        if isinstance(exc, DistributedTimeout):
            # the process group is broken: gloo's threads would abort the interpreter's normal
            # exit ("terminate called ..."), so leave at once after the message
            sys.stdout.flush()
            print(f"{prog}: error: {error_message(exc)}", file=sys.stderr, flush=True)
            os._exit(2)
        parser.exit(2, f"{prog}: error: {error_message(exc)}\n")
    if "per_seed" in summary:  # --seeds: the aggregate over seeds (each seed's own report is in out/seed-S/)
        from .seeds import seeds_report
        print(seeds_report(summary), flush=True)
    else:
        print(report(summary, args), flush=True)
    return 0
