"""The feature cache: the frozen front of the model runs once per image, not once per epoch.

When the first stages are frozen (BatchNorm in eval mode, no random augmentation), their output
is a fixed function of the image, so we compute it once, store it as fp16 in a memory-mapped
``.npy`` and train the remaining stages on it. The cache folder is named by a hash of
everything that changes the features (backbone, weights sha256, cut, preprocessing, data
fingerprint, library versions); ``meta.json`` is written last, so a folder without it, or with
a different key or a short file, is a partial or stale cache and is rebuilt.

Under torchrun the processes build the cache together: rank 0 creates the file at its full
size, each process computes a contiguous share of the rows and writes them in place, and rank 0
renames it and writes ``meta.json`` once all are done. On several machines that needs a
``--cache-dir`` that every machine sees (a shared filesystem).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.core import distributed as dist
from transferkit.core.errors import UserError
from transferkit.core.safeio import write_json_atomic
from transferkit.data.transforms import Preprocess, prepare

CACHE_VERSION = 2  # 2: uint8 resize on the CPU


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("transferkit")) / "features"


@dataclass
class FeatureSet:
    """Cached front outputs with their labels; hands out batches like an image set does."""

    features: np.ndarray  # memory-mapped, (N, ...) float16
    labels: torch.Tensor
    path: Path
    built: bool  # False when an existing cache was reused

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        rows = index.numpy()
        order = np.argsort(rows)  # sorted reads are sequential on disk; restore the order after
        block = torch.from_numpy(np.ascontiguousarray(self.features[rows[order]]))
        out = torch.empty_like(block)
        out[torch.from_numpy(order)] = block
        return out

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


def cache_key(parts: dict) -> str:
    import torchvision

    full = dict(parts, cache_version=CACHE_VERSION, torch=torch.__version__, torchvision=torchvision.__version__)
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _valid(folder: Path, key: str, n: int) -> bool:
    meta_file, data_file = folder / "meta.json", folder / "features.npy"
    if not (meta_file.is_file() and data_file.is_file()):
        return False
    try:
        meta = json.loads(meta_file.read_text())
        mm = np.load(data_file, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return meta.get("key") == key and meta.get("n") == n and mm.shape[0] == n and list(mm.shape[1:]) == meta.get("shape")


@torch.inference_mode()
def build_features(front: torch.nn.Module, imageset, pre: Preprocess, folder: Path, key: str, device,
                   channels_last: bool, batch_size: int = 256, progress=None, autocast=None) -> FeatureSet:
    """Reuse the cache in ``folder`` when valid (for every process), else (re)build it.

    ``front`` computes the features from a preprocessed batch: the frozen torch module, or an
    inference engine the caller chose (``runtimes``; this layer knows none of them).
    """
    n = len(imageset)
    built = not dist.all_true(_valid(folder, key, n))
    if built:
        _build(front, imageset, pre, folder, key, device, channels_last, batch_size, progress, autocast)
    return FeatureSet(np.load(folder / "features.npy", mmap_mode="r"), imageset.labels, folder, built=built)


def _build(front, imageset, pre, folder: Path, key: str, device, channels_last, batch_size, progress, autocast) -> None:
    n = len(imageset)
    front.eval()
    partial = folder / "features.partial.npy"
    forward = lambda index: _forward(front, imageset, index, pre, device, channels_last, autocast)  # noqa: E731
    if dist.is_main():
        shutil.rmtree(folder, ignore_errors=True)  # stale or partial: start over
        folder.mkdir(parents=True, exist_ok=True)
        shape = (n, *forward(torch.arange(1)).shape[1:]) if n else (0,)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape).flush()
    dist.barrier()
    if not dist.all_true(partial.is_file()):
        raise UserError(f"the feature cache {folder} is not visible to every process; on several machines give "
                        "--cache-dir a folder on a filesystem that all of them share, or pass --no-cache")
    header = np.load(partial, mmap_mode="r")
    offset, row_bytes = header.offset, int(np.prod(header.shape[1:], dtype=np.int64)) * 2 if n else 0
    del header
    mine = torch.arange(n).tensor_split(dist.world())[dist.rank()]
    bar = progress(total=len(mine), desc="caching features", unit="img") if progress else None
    # Plain writes at byte offsets rather than a shared memmap: on a network filesystem a
    # memmap writes back whole pages, which would clobber the neighbouring process's rows.
    with open(partial, "r+b") as f:
        for start in range(0, len(mine), batch_size):
            index = mine[start:start + batch_size]
            f.seek(offset + int(index[0]) * row_bytes)
            f.write(np.ascontiguousarray(forward(index)).tobytes())
            if bar:
                bar.update(len(index))
        f.flush()
        os.fsync(f.fileno())  # on disk before rank 0 renames the file for everyone
    if bar:
        bar.close()
    dist.barrier()
    if dist.is_main():
        shape = list(np.load(partial, mmap_mode="r").shape[1:])
        partial.replace(folder / "features.npy")
        write_json_atomic(folder / "meta.json", {"key": key, "n": n, "shape": shape, "dtype": "float16"})
    dist.barrier()


def _forward(front, imageset, index, pre, device, channels_last, autocast) -> np.ndarray:
    x = prepare(imageset.batch(index), pre, device, channels_last)
    with autocast() if autocast else nullcontext():
        out = front(x)
    return out.float().cpu().numpy().astype(np.float16)
