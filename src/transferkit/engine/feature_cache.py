"""The feature cache: the frozen front of the model runs once per image, not once per epoch.

When the first stages are frozen (BatchNorm in eval mode), their output is a fixed function of
the image (or of each of a few fixed views of it: ``FeatureViews``), so we compute it once, store
it as fp16 rows of an ``.npy`` file and train the remaining stages on it. The entry (``CACHE_DIR/features/KEY``) is named by a
hash of everything that changes the features (backbone, weights sha256, cut, preprocessing, data
fingerprint, library versions). Building, reusing, concurrent runs and leftovers of killed runs
follow the one cache-folder policy in ``core/cachedir.py``.

Under torchrun the processes build the cache together: rank 0 creates the file at its full
size, each process computes a contiguous share of the rows and writes them in place, and rank 0
publishes it once all are done. On several machines that needs a ``--cache-dir`` that every
machine sees (a shared filesystem). Rows are read back with ``pread`` (core/records.py), so
memory does not grow with the number of images.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from transferkit.core import cachedir
from transferkit.core.lazy import version_of
from transferkit.core.records import Records, read_from, write_rows
from transferkit.data.transforms import Preprocess, prepare

CACHE_VERSION = 3  # 2: uint8 resize on the CPU; 3: entries in CACHE_DIR/features with the shared policy


@dataclass
class FeatureSet:
    """Cached front outputs with their labels; hands out batches like an image set does."""

    features: Records  # (N, ...) float16 rows, read on demand
    labels: torch.Tensor
    path: Path
    built: bool  # False when an existing cache was reused

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.features.read(index.numpy()))

    @property
    def shape(self) -> tuple:
        return (len(self.labels), *self.features.shape)

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


@dataclass
class FeatureViews:
    """Several cached versions of each training image's features: its mirror image (``--augment
    flip``: views ``[plain, mirrored]``) or V augmented views (``--views``). A training batch
    (``draw``) takes one version per image, the one ``pick(index, epoch, b)`` names, and reads
    only those rows: memory and I/O per batch are those of one plain batch, whatever V is.
    ``batch`` (evaluation, shape probes) reads ``plain`` when held, else the first view."""

    views: list                     # FeatureSet per view, rows read on demand
    pick: Callable                  # (index, epoch, batch) -> LongTensor: the view of each image
    names: tuple                    # one per view, for the log and the tests
    plain: FeatureSet | None = None  # the unaugmented features, when something needs them

    def __len__(self) -> int:
        return len(self.views[0])

    @property
    def labels(self) -> torch.Tensor:
        return self.views[0].labels

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return (self.plain or self.views[0]).batch(index)

    def draw(self, index: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        picks = self.pick(index, epoch, b)
        return torch.from_numpy(read_from([v.features for v in self.views], picks.numpy(), index.numpy()))

    @property
    def shape(self) -> tuple:
        return self.views[0].shape

    @property
    def nbytes(self) -> int:
        extra = self.plain is not None and all(v is not self.plain for v in self.views)
        return sum(v.nbytes for v in self.views) + (self.plain.nbytes if extra else 0)

    @property
    def built(self) -> bool:
        return any(v.built for v in self.views)


def cache_key(parts: dict) -> str:
    full = dict(parts, cache_version=CACHE_VERSION, torch=torch.__version__, torchvision=version_of("torchvision"))
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:20]


@torch.inference_mode()
def build_features(front: torch.nn.Module, imageset, pre: Preprocess, root: Path, key: str, device,
                   channels_last: bool, batch_size: int = 256, progress=None, autocast=None) -> FeatureSet:
    """Reuse the cache entry ``key`` under the cache root ``root`` when complete, else (re)build it.

    ``front`` computes the features from a preprocessed batch: the frozen torch module, or an
    inference engine the caller chose (``runtimes``; this layer knows none of them).
    """
    n = len(imageset)
    entry = cachedir.Entry(root, "features", key)
    forward = lambda index: _forward(front, imageset, index, pre, device, channels_last, autocast)  # noqa: E731

    def create(partial: Path) -> dict:
        front.eval()
        shape = tuple(forward(torch.arange(1)).shape[1:]) if n else (0,)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, *shape)).flush()
        return {"shape": list(shape), "offset": int(np.load(partial, mmap_mode="r").offset)}

    def fill(partial: Path, info: dict) -> int:
        front.eval()
        row_bytes = int(np.prod(info["shape"], dtype=np.int64)) * 2
        mine = torch.arange(*cachedir.share(n))
        bar = progress(total=len(mine), desc="caching features", unit="img") if progress else None
        fd = os.open(partial, os.O_WRONLY)
        try:
            for start in range(0, len(mine), batch_size):
                index = mine[start:start + batch_size]
                write_rows(fd, forward(index), int(index[0]), row_bytes, info["offset"])
                if bar:
                    bar.update(len(index))
            os.fsync(fd)  # on disk before rank 0 publishes the file for everyone
        finally:
            os.close(fd)
        if bar:
            bar.close()
        return len(mine)

    def finish(info: dict, shares: list) -> dict:
        return {"n": n, "shape": info["shape"], "dtype": "float16", "offset": info["offset"], "built_by": shares,
                "about": f"{n:,} x {'x'.join(map(str, info['shape']))} fp16 features of {getattr(imageset, 'name', 'data')}"}

    def complete(meta: dict, path: Path) -> bool:
        row_bytes = int(np.prod(meta["shape"], dtype=np.int64)) * 2
        return meta["n"] == n and path.stat().st_size == meta["offset"] + n * row_bytes

    meta, built = cachedir.build(entry, "features.npy", complete=complete, create=create, fill=fill, finish=finish,
                                 what="feature cache")
    records = Records(entry.data_path(meta), n, tuple(meta["shape"]), np.float16, meta["offset"])
    return FeatureSet(records, imageset.labels, entry.folder, built=built)


def _forward(front, imageset, index, pre, device, channels_last, autocast) -> np.ndarray:
    x = prepare(imageset.batch(index), pre, device, channels_last)
    with autocast() if autocast else nullcontext():
        out = front(x)
    return out.float().cpu().numpy().astype(np.float16)
