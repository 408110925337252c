"""The decoded-image cache: every image file decoded once, at the run's size, into fixed-size records.

An entry (``CACHE_DIR/images/KEY``) holds ``images.u8``: image ``i`` is ``3 x S x S`` uint8 bytes
at offset ``i * 3 * S * S``, exactly what ``load_uint8`` returns (EXIF, colour modes, resize to
the short side, centre crop); after the ``n`` records come their ``n`` pixel digests
(data/pixels.py), 16 bytes each, which name the pixels in the keys of the caches built on them. KEY hashes the files (paths, sizes, modification times), the size,
the interpolation, ``--max-pixels`` and the decoding rules (a hash of ``data/images.py`` and the
Pillow version), so a changed file or rule never reuses old pixels. Broken files are listed in
the entry's meta with their reasons, and their records stay empty: a later run applies the same
``--skip-bad`` policy (data/imagesets.py) without decoding anything again.

Decoding runs in worker processes (Pillow), one share of the files per torchrun process, each
writing its rows in place (core/records.py); building, reuse, concurrent runs, killed builds and
a full disk follow core/cachedir.py. A worker process that dies (killed for memory, a decoder
crash) stops the build with one line, and the unfinished entry is removed. ``DiskImages`` then
reads batches back with ``pread``, so the memory a run needs depends on the batch size, not on
the number of images.

A member of a tar shard is read whole into memory, so its size (from the tar header) is checked
first: one larger than any image within ``--max-pixels`` can need (``max_encoded_bytes``), or
one that runs past the end of its shard (a shard cut short after indexing), is a broken file
with its reason, read not at all; so is every member of a shard deleted since it was indexed.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch

from transferkit.core import cachedir
from transferkit.core import distributed as dist
from transferkit.core.errors import UserError
from transferkit.core.records import Records, write_rows
from transferkit.data import images as decoding_rules
from transferkit.data import pixels
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, load_uint8, max_encoded_bytes

LAYOUT_VERSION = 2  # 2: pixel digests after the records; of the entry's files; the decoding rules are versioned by their source's hash
RULES = hashlib.sha256(Path(decoding_rules.__file__).read_bytes()).hexdigest()[:16]
CHUNK = 16          # images per task handed to a decoding worker
PREFETCH = 4        # batches read ahead while streaming (data/stream.py)
WORKERS_ENV = "TRANSFERKIT_DECODE_WORKERS"


def item_name(item) -> str:
    return item if isinstance(item, str) else item[0]


def open_item(item, max_pixels: int = DEFAULT_MAX_PIXELS):
    """What ``open_rgb`` reads: a file name, or the bytes of a member of a tar shard
    (``(name, shard path, offset, size)``) in a BytesIO, its size checked before it is read."""
    if isinstance(item, str):
        return item
    name, shard, offset, size = item
    if size > (limit := max_encoded_bytes(max_pixels)):
        raise BadImage(name, f"its tar header claims {size:,} bytes, more than an image of at most {max_pixels:,} "
                             f"pixels can need ({limit:,}); not read (raise --max-pixels if you trust this shard)")
    try:
        with open(shard, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + size:
                raise BadImage(name, "truncated (the shard ends before this member does)")
            data = os.pread(f.fileno(), size, offset)
    except OSError as exc:
        raise BadImage(name, f"its shard cannot be read ({exc.strerror or exc}); was it moved or deleted after it "
                             "was indexed?") from None
    if len(data) != size:
        raise BadImage(name, "truncated (the shard ends early)")
    return io.BytesIO(data)


def load_item(item, size: int, interpolation: str, max_pixels: int) -> np.ndarray:
    """``(3, size, size)`` uint8 of an image file or shard member; BadImage names it by path either way."""
    try:
        return load_uint8(open_item(item, max_pixels), size, interpolation, max_pixels)
    except BadImage as bad:
        raise BadImage(item_name(item), bad.reason) from None


def decode_workers(requested: int = 0) -> int:
    """Worker processes for one process's share: ``requested`` (``--decode-workers``) when given,
    else ``TRANSFERKIT_DECODE_WORKERS``, else the CPUs it may use, split between the torchrun
    processes of this machine."""
    if requested > 0:
        return requested
    if os.environ.get(WORKERS_ENV, "").isdigit() and int(os.environ[WORKERS_ENV]) > 0:
        return int(os.environ[WORKERS_ENV])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.launched() else 1
    return max(1, cpus // max(1, local))


# The decoding job of a worker process, set once by the pool's initializer.
_job: dict = {}


def _start_job(partial: str, items: list, size: int, interpolation: str, max_pixels: int) -> None:
    _job.update(fd=os.open(partial, os.O_WRONLY), items=items, size=size, interpolation=interpolation,
                max_pixels=max_pixels)


def _start_worker(*args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker
    _start_job(*args)


def _decode_rows(start: int, stop: int) -> list:
    """Decode rows ``start..stop`` into the partial file, and their digests after the records;
    ``[(row, reason)]`` for broken files."""
    job, bad = _job, []
    record = 3 * job["size"] * job["size"]
    digests_at = len(job["items"]) * record
    for row in range(start, stop):
        try:
            array = load_item(job["items"][row], job["size"], job["interpolation"], job["max_pixels"])
        except BadImage as exc:
            bad.append((row, exc.reason))
            continue
        write_rows(job["fd"], array, row, record)
        write_rows(job["fd"], pixels.digest(array), row, pixels.DIGEST, digests_at)
    return bad


def _decode_share(partial: Path, items: list, rows: range, size: int, interpolation: str, max_pixels: int,
                  bar, name: str, requested: int = 0) -> list:
    chunks = [(s, min(s + CHUNK, rows.stop)) for s in range(rows.start, rows.stop, CHUNK)]
    workers = min(decode_workers(requested), len(chunks))
    args = (str(partial), items, size, interpolation, max_pixels)
    bad = []
    if workers <= 1:
        _start_job(*args)
        try:
            for start, stop in chunks:
                bad += _decode_rows(start, stop)
                if bar:
                    bar.update(stop - start)
        finally:
            os.close(_job.pop("fd"))
            _job.clear()
        return bad
    # fork: the workers start at once and inherit the item list instead of unpickling it.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=args)
    futures = {}
    try:
        futures = {pool.submit(_decode_rows, start, stop): (start, stop) for start, stop in chunks}
        for future in as_completed(futures):
            bad += future.result()
            if bar:
                bar.update(futures[future][1] - futures[future][0])
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        left = sorted(rows for future, rows in futures.items()
                      if not future.done() or future.cancelled() or future.exception() is not None)
        first = item_name(items[left[0][0]]) if left else "?"
        raise UserError(f"a decoding worker process died while decoding {name} ({sum(b - a for a, b in left):,} "
                        f"images left undecoded, from {first} on): killed for memory, or a file that crashes the "
                        "image decoder? `transferkit data check` lists the files it cannot use") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: stop now, not after every queued image
        raise
    pool.shutdown()
    return bad


def cache_key(imageset, size: int, interpolation: str, max_pixels: int) -> str:
    parts = {"files": imageset.fingerprint(labels=False), "size": size, "interpolation": interpolation,
             "max_pixels": max_pixels, "layout": LAYOUT_VERSION, "rules": RULES, "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Decoded:
    records: Records      # every image of the set, in order (broken ones: empty records)
    digests: Records      # their pixel digests (data/pixels.py)
    bad: list             # [(row, reason)]
    key: str
    built: bool


def decode_cached(imageset, size: int, interpolation: str, max_pixels: int, root: Path, progress=None,
                  workers: int = 0) -> Decoded:
    """The cache entry of ``imageset`` at ``size``: reused when complete, else decoded now (each
    torchrun process decoding its share of the files, with ``decode_workers(workers)`` processes)."""
    n, record = len(imageset), 3 * size * size
    total = n * (record + pixels.DIGEST)
    key = cache_key(imageset, size, interpolation, max_pixels)
    entry = cachedir.Entry(root, "images", key)
    items = [imageset.item(i) for i in range(n)]

    def create(partial: Path) -> None:
        with open(partial, "wb") as f:
            f.truncate(total)  # sparse: no disk used until the rows are written

    def fill(partial: Path, _info) -> dict:
        rows = range(*cachedir.share(n))
        bar = progress(total=len(rows), desc=f"decoding {imageset.name}", unit="img") if progress else None
        bad = _decode_share(partial, items, rows, size, interpolation, max_pixels, bar, imageset.name, workers)
        if bar:
            bar.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)  # the workers' writes on disk before rank 0 publishes the file
        finally:
            os.close(fd)
        return {"decoded": len(rows), "bad": bad}

    def finish(_info, shares: list) -> dict:
        bad = sorted((row, reason) for share in shares for row, reason in share["bad"])
        return {"n": n, "shape": [3, size, size], "dtype": "uint8", "interpolation": interpolation,
                "bad": bad, "decoded_by": [share["decoded"] for share in shares],
                "about": f"{n:,} images at {size} px ({interpolation}) of {imageset.name}"}

    def complete(meta: dict, path: Path) -> bool:
        return meta["n"] == n and meta["shape"] == [3, size, size] and path.stat().st_size == total

    meta, built = cachedir.build(entry, "images.u8", complete=complete, create=create, fill=fill, finish=finish,
                                 what="decoded-image cache")
    records = Records(entry.data_path(meta), n, (3, size, size), np.uint8)
    digests = Records(entry.data_path(meta), n, (pixels.DIGEST,), np.uint8, offset=n * record)
    return Decoded(records, digests, [tuple(b) for b in meta["bad"]], key, built)


class DiskImages:
    """Images streamed from the decoded cache: ``batch(index)`` reads just those records."""

    prefetch = PREFETCH  # engine/batches.py reads batches this far ahead in a background thread

    def __init__(self, records: Records, rows, labels: torch.Tensor, classes: list[str], name: str,
                 paths: list[str], digests: Records, pin_memory: bool = False):
        self.records, self.rows = records, np.asarray(rows, dtype=np.int64)
        self.labels, self.classes, self.name, self.paths = labels, list(classes), name, list(paths)
        self.digests, self.pin_memory = digests, pin_memory

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.records.read(self.rows[np.asarray(index, dtype=np.int64)]))

    def subset(self, index) -> "DiskImages":
        index = np.asarray(index, dtype=np.int64)
        return DiskImages(self.records, self.rows[index], self.labels[torch.from_numpy(index)], self.classes,
                          self.name, [self.paths[i] for i in index.tolist()], self.digests, self.pin_memory)

    def fingerprint(self, labels: bool = True) -> str:
        """The rows' pixel digests (stored with the records: no pixel needs reading) and the labels
        unless ``labels=False``: the same as the TensorImages that the same rows make in memory."""
        return pixels.fingerprint(self.records.shape, self.digests.read(self.rows), self.labels if labels else None)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.records.record_bytes
