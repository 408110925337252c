"""An image set seen through one ImageNet-C corruption, at the model's input size, corrupted in worker processes.

Where the corruption applies: on uint8 RGB at the run's input size, after decoding and resizing and
before normalisation (what ImageNet-C did to its 224-px crops). Built-in sets held at their own size
(28x28 Fashion-MNIST, 8x8 digits) are first resized as ``prepare`` would (transforms.resize) and
given three channels, so the model sees exactly the clean image plus the corruption.

Speed: each corruption is per-image numpy, so a batch is split between worker processes (one per
usable core, like the decoded-image cache's decoders: imagecache.decode_workers). The workers are
spawned, not forked: they load only numpy, Pillow and the corruption library, never a copy of the
model or of threads already running here, and OpenCV starts clean in each. The image set has
``prefetch``, so engine/batches.py reads the next batch (corrupting it) while the model scores this one.
"""
from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from transferkit.data.corrupt.imagenet_c import corrupt_many, image_seed, library, start_worker
from transferkit.data.imagecache import decode_workers
from transferkit.data.transforms import Preprocess, resize

PREFETCH = 2  # batches corrupted ahead of the model


class CorruptionPool:
    """Worker processes that corrupt image batches; with one usable core (or ``workers=1``) the
    images are corrupted here. Started on first use, ended by ``close`` (or ``with``)."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers if workers is not None else decode_workers())
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "CorruptionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def corrupt(self, images: np.ndarray, name: str, severity: int, seeds: np.ndarray) -> tuple[np.ndarray, float]:
        """``(N, H, W, 3)`` uint8 corrupted, in order, and the seconds of corruption work (all workers)."""
        parts = min(self.workers, len(images))
        if parts <= 1:
            return corrupt_many(images, name, severity, seeds)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=start_worker)
        chunks = np.array_split(np.arange(len(images)), parts)
        futures = [self._pool.submit(corrupt_many, images[c], name, severity, seeds[c]) for c in chunks]
        done = [f.result() for f in futures]
        return np.concatenate([out for out, _ in done]), sum(seconds for _, seconds in done)


def rgb_at_size(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 ``(N, 1|3, H, W)`` -> uint8 ``(N, 3, size, size)``: the pixels ``prepare`` would normalise."""
    x = resize(batch, pre)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Corrupted:
    """``images`` under corruption ``name`` at ``severity``: ``batch(index)`` gives uint8 ``(N, 3, S, S)``.

    Image ``i`` is seeded by ``positions[i]`` (its place in the whole split, default ``i``), so a
    subset sees the same corrupted images as the whole split does. ``seconds``: corruption work so far.
    """

    prefetch = PREFETCH

    def __init__(self, images, name: str, severity: int, pre: Preprocess, pool: CorruptionPool,
                 positions=None, seed: int = 0):
        self.images, self.labels, self.name, self.severity = images, images.labels, name, severity
        self.pre, self.pool, self.seed = pre, pool, seed
        self.positions = np.arange(len(images)) if positions is None else np.asarray(positions, dtype=np.int64)
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self, labels: bool = True) -> str:
        """The clean images' fingerprint, the corruption, its seeds and the library: a cache key part
        (every corrupted image is a fixed function of these)."""
        places = hashlib.sha256(self.positions.tobytes()).hexdigest()[:16]
        return (f"{self.images.fingerprint(labels=labels)}|corrupted:{self.name}:{self.severity}:{self.seed}:{places}:"
                f"{self.pre.key()}:{library()}")

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        clean = rgb_at_size(self.images.batch(index), self.pre).permute(0, 2, 3, 1).contiguous().numpy()
        seeds = np.array([image_seed(self.seed, self.name, self.severity, int(self.positions[i])) for i in index.tolist()],
                         dtype=np.uint32)
        out, seconds = self.pool.corrupt(clean, self.name, self.severity, seeds)
        self.seconds += seconds
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
