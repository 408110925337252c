"""A restricted unpickler that rebuilds plain numeric numpy arrays and nothing else.

Some data sets on PyPI ship their arrays as pickles. ``pickle.load`` on such a file runs whatever
the file names (``os.system`` included); this unpickler resolves only the few globals a plain
ndarray pickle uses and refuses every other one, persistent ids and object arrays. What it still
allows is a denial of service (a crafted shape asking for too much memory), which
``max_bytes`` bounds for the decompressed file.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

try:  # numpy 2 moved the internals; pickles written by numpy 1 still name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric



def _latin1_bytes(text, encoding="latin1"):
    """Protocol 2 stores bytes as ``_codecs.encode(str, "latin1")``: that codec only, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed with the latin1 codec only")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,  # written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("_codecs", "encode"): _latin1_bytes,  # protocol 2
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: only numpy array pickles are allowed") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def loads_ndarray(data: bytes) -> np.ndarray:
    """One plain numeric ndarray from pickle bytes; anything else raises ``pickle.UnpicklingError``."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    if type(obj) is not np.ndarray:
        raise pickle.UnpicklingError(f"expected a numpy.ndarray, got {type(obj).__name__}")
    if obj.dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return obj


def load_gz_ndarray(path: str | Path, max_bytes: int = 256 << 20) -> np.ndarray:
    """Gunzip at most ``max_bytes`` (against gzip bombs), then ``loads_ndarray``."""
    with gzip.open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise pickle.UnpicklingError(f"{path}: more than {max_bytes} bytes once decompressed")
    return loads_ndarray(raw)
