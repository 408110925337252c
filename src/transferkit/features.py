"""The feature cache: the frozen front of the model runs once per image, not once per epoch.

When the first stages are frozen (BatchNorm in eval mode, no random augmentation), their output
is a fixed function of the image, so we compute it once, store it as fp16 in a memory-mapped
``.npy`` and train the remaining stages on it. The cache folder is named by a hash of
everything that changes the features (backbone, weights sha256, cut, preprocessing, data
fingerprint, library versions); ``meta.json`` is written last, so a folder without it, or with
a different key or a short file, is a partial or stale cache and is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.safeio import write_json_atomic
from transferkit.transforms import Preprocess, prepare

CACHE_VERSION = 1


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
    """Reuse the cache in ``folder`` when valid, else (re)build it."""
    n = len(imageset)
    if _valid(folder, key, n):
        return FeatureSet(np.load(folder / "features.npy", mmap_mode="r"), imageset.labels, folder, built=False)
    shutil.rmtree(folder, ignore_errors=True)  # stale or partial: start over
    folder.mkdir(parents=True, exist_ok=True)
    front.eval()
    partial = folder / "features.partial.npy"
    store = None
    bar = progress(total=n, desc="caching features", unit="img") if progress else None
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        x = prepare(imageset.batch(index), pre, device, channels_last)
        with autocast() if autocast else nullcontext():
            out = front(x)
        out = out.float().cpu().numpy().astype(np.float16)
        if store is None:
            store = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, *out.shape[1:]))
        store[start:start + len(index)] = out
        if bar:
            bar.update(len(index))
    if bar:
        bar.close()
    if store is None:
        store = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(0,))
    store.flush()
    shape = list(store.shape[1:])
    del store
    partial.replace(folder / "features.npy")
    write_json_atomic(folder / "meta.json", {"key": key, "n": n, "shape": shape, "dtype": "float16"})
    return FeatureSet(np.load(folder / "features.npy", mmap_mode="r"), imageset.labels, folder, built=True)
