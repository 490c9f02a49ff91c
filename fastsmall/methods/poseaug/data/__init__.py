"""PoseAug data sources; every loader returns a :class:`PoseSet`.

``load(source, data_dir, **kw)`` picks one by name:

* ``"synthetic"``: :func:`synthetic.generate` (``data_dir`` unused; ``n=`` required);
* ``"h36m"``: :func:`h36m.load_h36m` on a VideoPose3D/PoseAug data directory;
* ``"3dhp"``: :func:`mpi3dhp.load_3dhp` (``data_dir`` is the .npz file, or a directory holding
  ``test_3dhp.npz``);
* ``"bvh"``: :func:`bvh.load_bvh` (a .bvh file or a directory of them).
"""
from __future__ import annotations

from pathlib import Path

from ._common import DataFormatError, MissingKeyError
from .bvh import BVHFormatError, load_bvh, parse_bvh
from .h36m import H36M_TEST, H36M_TRAIN, load_h36m, load_h36m_frames
from .mpi3dhp import load_3dhp
from .poseset import PoseSet
from .synthetic import generate as generate_synthetic

__all__ = ["PoseSet", "load", "SOURCES", "generate_synthetic", "load_h36m", "load_h36m_frames", "load_3dhp",
           "load_bvh", "parse_bvh", "H36M_TRAIN", "H36M_TEST", "DataFormatError", "MissingKeyError",
           "BVHFormatError"]

SOURCES = ("synthetic", "h36m", "3dhp", "bvh")


def load(source: str, data_dir: str | Path | None = None, **kw) -> PoseSet:
    """Load ``source`` (one of ``SOURCES``) from ``data_dir``; ``kw`` goes to the loader."""
    if source == "synthetic":
        if "n" not in kw:
            raise ValueError("load('synthetic', ...) needs n=<number of poses>")
        return generate_synthetic(kw.pop("n"), **kw)
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of {list(SOURCES)}")
    if data_dir is None:
        raise ValueError(f"load({source!r}, ...) needs data_dir")
    if source == "h36m":
        return load_h36m(data_dir, **kw)
    if source == "3dhp":
        path = Path(data_dir)
        return load_3dhp(path / "test_3dhp.npz" if path.is_dir() else path, **kw)
    return load_bvh(data_dir, **kw)
