"""Files of fixed-size records (decoded images, cached features): written and read at byte offsets.

Why not ``np.memmap``: every page of a memory map that a process reads counts in its resident
memory (RSS) for as long as the map lives, so reading a 15 GB cache through one grows the
process to 15 GB even though nothing is kept. Plain ``pread`` calls copy each batch into a buffer
of its own and leave the rest in the OS page cache, which the kernel can drop at any time:
memory stays at a few batches whatever the size of the file. Writes go the same way, at offsets,
so several processes (torchrun ranks, decoding workers) fill disjoint rows of one file safely,
even on a network filesystem where a memory map writes back whole pages.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class Records:
    """Read rows of a file holding ``n`` records of ``shape`` ``dtype`` from byte ``offset`` on."""

    def __init__(self, path: str | os.PathLike, n: int, shape: tuple, dtype, offset: int = 0):
        self.path, self.n, self.shape = Path(path), int(n), tuple(int(d) for d in shape)
        self.dtype, self.offset = np.dtype(dtype), int(offset)
        self.record_bytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        # Opened once: a run keeps reading its cache even if `transferkit cache clear` unlinks it.
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.n

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    @property
    def nbytes(self) -> int:
        return self.n * self.record_bytes

    def read(self, rows) -> np.ndarray:
        """Records ``rows`` (any order, repeats allowed) as a new ``(len(rows), *shape)`` array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return read_from([self], np.zeros(len(rows), dtype=np.int64), rows)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.read(np.arange(start, stop))

    def _read_into(self, buffer: np.ndarray, offset: int) -> None:
        view, done = memoryview(buffer), 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: file ended at byte {offset + done} (a cache cut short?)")
            done += got


def read_from(sources: list, which, rows) -> np.ndarray:
    """Row ``rows[i]`` of ``sources[which[i]]`` for every ``i``, as one new array: the records of
    several files of one shape and dtype (the views of a feature cache) read straight into their
    places, with no per-file pass and no scatter afterwards."""
    first = sources[0]
    which, rows = np.asarray(which, dtype=np.int64).reshape(-1), np.asarray(rows, dtype=np.int64).reshape(-1)
    out = np.empty((len(rows), *first.shape), dtype=first.dtype)
    if not len(rows):
        return out
    limits = np.array([source.n for source in sources])[which]  # each row's own file's length
    bad = np.flatnonzero((rows < 0) | (rows >= limits))
    if len(bad):
        raise IndexError(f"record index out of range 0..{limits[bad[0]] - 1}")
    flat = out.reshape(len(rows), -1).view(np.uint8)
    # Consecutive rows of one file (in the order asked) are one read: sequential passes cost few calls.
    breaks = (np.diff(rows, prepend=rows[0] - 2) != 1) | (np.diff(which, prepend=which[0]) != 0)
    starts = np.flatnonzero(breaks)
    ends = np.append(starts[1:], len(rows))
    size = first.record_bytes
    for start, end in zip(starts.tolist(), ends.tolist()):
        source = sources[which[start]]
        source._read_into(flat[start:end].reshape(-1), source.offset + int(rows[start]) * size)
    return out


def write_rows(fd: int, array: np.ndarray, first_row: int, record_bytes: int, offset: int = 0) -> None:
    """Write ``array`` (rows ``first_row``, ``first_row + 1``, ...) into the open file ``fd``."""
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    position, done = offset + first_row * record_bytes, 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], position + done)
