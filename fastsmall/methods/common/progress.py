"""Progress bars on long loops: tqdm on a terminal, silent otherwise or when quiet."""
from __future__ import annotations

import sys


def progress(iterable, *, desc: str = "", total: int | None = None, quiet: bool = False, leave: bool = False):
    if quiet or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
