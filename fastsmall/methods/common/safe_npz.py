"""Reading ``.npz`` / ``.npy`` files without ever executing code from them.

Plain arrays load with ``np.load(allow_pickle=False)``. One real released format needs more:
VideoPose3D's ``data_3d_h36m.npz`` / ``data_2d_h36m_gt.npz`` (used by PoseAug) store a dict
``subject -> action -> array`` as a 0-d *object* array, i.e. a pickle. numpy would unpickle it
with ``pickle.load``, which runs whatever the file says. :func:`read_object_array` instead
parses the pickle with an unpickler that can only build numpy arrays, dtypes and numpy scalars
(plus the dicts, lists, tuples, strings and numbers the pickle format itself encodes): any other
global -- ``os.system``, ``builtins.eval``, a class of the file's choosing -- is refused before
anything is called, with an error naming the file and the key.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from numpy.lib import format as npy_format

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

# (module, name) -> object: all an array of arrays needs (numpy 1.x and 2.x spellings)
_ALLOWED = {
    (module, name): obj
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, obj in (("_reconstruct", _multiarray._reconstruct), ("scalar", _multiarray.scalar))
}
_ALLOWED.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype})


class UnsafePickleError(ValueError):
    """A pickled payload refers to something other than numpy arrays and plain containers."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refers to {module}.{name}, which is not a numpy array type") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("uses persistent ids")


def read_object_array(path, key: str):
    """The object held by ``key`` of the ``.npz`` at ``path`` (its 0-d object array unwrapped),
    unpickled with numpy arrays as the only globals allowed. Raises ``ValueError`` naming the
    file and the key when the payload is anything else or cannot be parsed."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            member = f"{key}.npy"
            if member not in zf.namelist():
                raise KeyError(f"{path}: missing key {key!r}")
            with zf.open(member) as f:
                version = npy_format.read_magic(f)
                read_header = {(1, 0): npy_format.read_array_header_1_0}.get(version, npy_format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                if not dtype.hasobject:  # a plain array: numpy reads it without pickle
                    f.seek(0)
                    return npy_format.read_array(f, allow_pickle=False)
                obj = _ArraysOnlyUnpickler(io.BytesIO(f.read())).load()
    except (KeyError, UnsafePickleError):
        raise
    except Exception as exc:  # zipfile / header / pickle errors
        raise ValueError(f"{path}: key {key!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def read_object_array_checked(path, key: str):
    """:func:`read_object_array` with an :class:`UnsafePickleError` worded for the user."""
    try:
        return read_object_array(path, key)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: key {key!r} holds a pickled object that {exc}; refused without "
                                f"running it (fastsmall reads only arrays and dicts of arrays from data files)"
                                ) from None
