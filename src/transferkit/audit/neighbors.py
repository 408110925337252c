"""Nearest neighbours by cosine similarity, flip-invariant, found in batches (never an N x N matrix).

Each image is compared with every other one as it is and in a mirror:
``similarity(a, b) = max(cos(a, b), cos(a, mirror(b)))``, so a mirrored copy is as close as the
original. Exact brute force:
batched matrix products in torch (BLAS on every core), a ``(batch, N)`` block of similarities at a
time, of which only the top ``k`` per row are kept: the same neighbours as scikit-learn's
``NearestNeighbors(algorithm="brute", metric="cosine")``, which has no flip-invariant similarity
(benchmarks/audit.py times both, one way). The cost grows as N^2: on features reduced to 256
dimensions (features.py) it is seconds at 10,000 images; an approximate index (hnswlib, faiss)
is the step to take if 100,000-image audits need to be faster than the benchmark measures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 1 << 24  # similarities held at once (64 MB of float32): batch rows x N


@dataclass
class Neighbours:
    """Each image's ``k`` most similar other images, most similar first."""

    index: np.ndarray       # (N, k) int64 rows into the same arrays
    similarity: np.ndarray  # (N, k) float32 cosine similarity, flip-invariant

    @property
    def k(self) -> int:
        return self.index.shape[1]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@torch.inference_mode()
def nearest(plain: np.ndarray, mirrored: np.ndarray | None, k: int, progress=None) -> Neighbours:
    """The ``k`` nearest other rows of every row of ``plain`` (unit rows), mirror images counted.

    ``mirrored[i]`` is row ``i``'s mirror image; ``None`` compares the rows only as they are.
    """
    n = len(plain)
    k = max(0, min(k, n - 1))
    base = torch.from_numpy(np.ascontiguousarray(plain, dtype=np.float32))
    mirror = torch.from_numpy(np.ascontiguousarray(mirrored, dtype=np.float32)) if mirrored is not None else None
    index = np.zeros((n, k), dtype=np.int64)
    similarity = np.zeros((n, k), dtype=np.float32)
    batch = max(16, BLOCK // max(n, 1))
    bar = progress(total=n, desc="neighbours", unit="img") if progress else None
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        query = base[start:stop]
        sims = query @ base.T
        if mirror is not None:
            torch.maximum(sims, query @ mirror.T, out=sims)
        rows = torch.arange(stop - start)
        sims[rows, rows + start] = -float("inf")  # an image is not its own neighbour
        if k:
            top = sims.topk(k, dim=1)
            similarity[start:stop], index[start:stop] = top.values.numpy(), top.indices.numpy()
        if bar:
            bar.update(stop - start)
    if bar:
        bar.close()
    return Neighbours(index, similarity)
