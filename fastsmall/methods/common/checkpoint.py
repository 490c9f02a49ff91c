"""Atomic, verified checkpoints.

* **Atomic**: written to a temporary file in the same folder, fsynced, renamed. A run killed
  at any moment (SIGKILL included) leaves a complete checkpoint, never a torn file; a
  temporary file left by a kill is removed by :func:`remove_stale_temporaries` on resume.
* **Verified**: the state is serialised once, its SHA-256 is stored beside the bytes, and
  :func:`load_checkpoint` recomputes it before unpacking anything: a flipped byte anywhere in
  the state is a :class:`CheckpointError` naming the file, never a silently different run.
* **Safe to load**: checkpoints hold only tensors and plain containers; both layers load with
  ``torch.load(weights_only=True)``, which executes no code from the file.
* **The latest ``keep`` are kept** (``keep=N``; a run's ``--keep``, default 2): ``last.pt`` is
  the newest, ``prev.pt`` the one written before it, ``prev-2.pt`` the one before that, ... up
  to ``prev-<N-1>.pt`` -- by recency of writing, whatever the method writes (epoch and
  generation-end checkpoints alike). A save renames each kept one a place older (the oldest
  drops out), then renames the new file into place, then deletes any kept beyond ``N`` (a run
  resumed with a smaller ``--keep``); every step is an atomic rename or unlink, so a kill at any
  moment leaves complete checkpoints only. ``keep=1`` keeps ``last.pt`` alone. A corrupted latest
  checkpoint is resumed from the newest earlier one that is intact (:func:`load_latest_checkpoint`).
  ``keep_previous=True`` is the old spelling of ``keep=2``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

FORMAT = "fastsmall-checkpoint-v2"
TMP_SUFFIX = ".tmp"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or belongs to another run; the message says which."""


class CorruptCheckpointError(CheckpointError):
    """The file is unreadable or its contents do not match the stored checksum."""


def previous_path(path, back: int = 1) -> Path:
    """Where ``save_checkpoint(path, ..., keep=N)`` keeps the checkpoint written ``back`` saves
    before ``path`` (``back`` < N): ``prev.pt``, ``prev-2.pt``, ... beside ``last.pt``;
    ``NAME.prev.pt``, ``NAME.prev-2.pt``, ... beside any other ``NAME.pt``."""
    path = Path(path)
    if back < 1:
        raise ValueError(f"back must be >= 1, got {back}")
    prev = "prev" if back == 1 else f"prev-{back}"
    return path.with_name((prev if path.stem == "last" else f"{path.stem}.{prev}") + path.suffix)


def earlier_checkpoints(path) -> list[tuple[int, Path]]:
    """``(back, file)`` of every earlier checkpoint kept beside ``path`` (:func:`previous_path`'s
    names that exist), newest first."""
    path = Path(path)
    stem = "" if path.stem == "last" else re.escape(path.stem) + r"\."
    pattern = re.compile(rf"{stem}prev(?:-([0-9]+))?{re.escape(path.suffix)}")
    found = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and p.is_file():
                back = int(m.group(1)) if m.group(1) else 1
                if back >= 1 and p == previous_path(path, back):  # (prev-01.pt is not a name this writes)
                    found.append((back, p))
    return sorted(found)


def check_keep(keep) -> int:
    """``keep`` as an int >= 1 (a bool or a float is refused), else a ValueError."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1 (how many checkpoints to keep), got {keep!r}")
    return keep


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def user_file_mode() -> int:
    """The mode ``open()`` would give a new file under the user's umask (``mkstemp`` makes 0600
    files, which would hide a run's results from the user's group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(path, state: dict, *, keep: int | None = None, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` atomically, verified on load (see the module docstring).

    ``keep=N``: ``path`` and the N-1 checkpoints written before it are kept beside it
    (:func:`previous_path`), any older one is deleted. ``keep=None`` (the default) replaces
    ``path`` and leaves whatever else is there alone -- ``keep_previous=True``: as ``keep=2``."""
    path = Path(path)
    if keep is None and keep_previous:
        keep = 2
    if keep is not None:
        check_keep(keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    wrapper = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, user_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(wrapper, f)
            f.flush()
            os.fsync(f.fileno())
        if keep is not None and keep >= 2:  # each kept one a place older (oldest first), the oldest drops out
            for back, older in reversed(earlier_checkpoints(path)):
                if back < keep - 1:
                    os.replace(older, previous_path(path, back + 1))
            if path.exists():
                os.replace(path, previous_path(path))
        os.replace(tmp, path)
        if keep is not None:  # beyond keep: left by a run with a larger --keep (the new last.pt is in place)
            for back, older in earlier_checkpoints(path):
                if back >= keep:
                    older.unlink()
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: Path, map_location) -> dict:
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt or not a fastsmall checkpoint: "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(outer, dict) and outer.get("format") == FORMAT:
        payload = outer.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its payload is not a byte tensor")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt: its contents do not match the stored "
                                         f"SHA-256 checksum")
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from None
    if isinstance(outer, dict):  # written before checksums existed: usable, but unverified
        warnings.warn(f"checkpoint {path} has no checksum (an older fastsmall wrote it); loading it unverified",
                      stacklevel=3)
        return torch.load(path, map_location=map_location, weights_only=True)
    raise CorruptCheckpointError(f"checkpoint {path} holds a {type(outer).__name__}, expected a dict")


def load_checkpoint(path, *, expect: dict | None = None, map_location="cpu") -> dict:
    """Load and verify a checkpoint; ``expect`` maps keys to the values this run needs them to have."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    state = _read(path, map_location)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            if key == "config":
                raise CheckpointError(f"checkpoint {path} does not match this run, written with another config: "
                                      f"{config_difference(state.get(key), value)}")
            raise CheckpointError(
                f"checkpoint {path} does not match this run: {key} is {state.get(key)!r}, expected {value!r}"
            )
    return state


def config_difference(saved, current) -> str:
    """The fields two config fingerprints (canonical JSON) disagree on, as ``--flag saved (checkpoint)
    vs current (this run)``; the raw strings when they are not both JSON objects."""
    try:
        a, b = json.loads(saved), json.loads(current)
    except (TypeError, ValueError):
        return f"{saved!r} vs {current!r}"
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return f"{saved!r} vs {current!r}"
    def shown(d, k):
        return repr(d[k]) if k in d else "'(absent)'"
    parts = [f"--{k.replace('_', '-')} {shown(a, k)} (checkpoint) vs {shown(b, k)} (this run)"
             for k in sorted(set(a) | set(b)) if (k in a, a.get(k)) != (k in b, b.get(k))]
    return "; ".join(parts) if parts else "the same fields, other values"


def load_latest_checkpoint(path, *, expect: dict | None = None, map_location="cpu") -> tuple[dict, Path, str | None]:
    """``(state, the file it came from, a note)``: ``path``, or -- when ``path`` is missing or
    corrupt -- the newest intact earlier checkpoint kept beside it (``prev.pt``, then ``prev-2.pt``,
    ...), with a note saying so. A checkpoint of another run (``expect`` mismatch) is never skipped
    over: that is an error; so is every kept checkpoint being corrupt."""
    path = Path(path)
    try:
        return load_checkpoint(path, expect=expect, map_location=map_location), path, None
    except CheckpointError as exc:
        earlier = earlier_checkpoints(path)
        if not earlier or not (isinstance(exc, CorruptCheckpointError) or not path.exists()):
            raise
        unusable = []
        for back, prev in earlier:
            try:
                state = load_checkpoint(prev, expect=expect, map_location=map_location)
            except CorruptCheckpointError as prev_exc:
                unusable.append(str(prev_exc))
                continue
            skipped = "".join(f"; {u}" for u in unusable)
            which = "previous" if back == 1 else "earlier"
            return state, prev, f"{exc}{skipped}; resuming from the {which} checkpoint {prev} instead"
        which = "the previous checkpoint is" if len(unusable) == 1 else "the earlier checkpoints are"
        raise CorruptCheckpointError(f"{exc}; {which} unusable too: {'; '.join(unusable)}") from None


def has_checkpoint(path) -> bool:
    """Whether ``path`` or an earlier checkpoint kept beside it exists."""
    return Path(path).is_file() or bool(earlier_checkpoints(path))


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporary files that a kill during an atomic write left in ``folder``."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed
