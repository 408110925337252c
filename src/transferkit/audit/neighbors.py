"""Nearest neighbours by cosine similarity, flip-invariant, found in batches (never an N x N matrix).

Each image is compared with every other one as it is and in a mirror:
``similarity(a, b) = max(cos(a, b), cos(a, mirror(b)))``, so a mirrored copy is as close as the
original. Up to ``EXACT_UP_TO`` images: exact brute force, batched matrix products in torch (BLAS on every
core), a ``(batch, N)`` block of similarities at a time of which only the top ``k`` per row are kept
(the neighbours of scikit-learn's ``NearestNeighbors(algorithm="brute", metric="cosine")``, which has
no flip-invariant similarity; benchmarks/audit.py times both). Its cost grows as N^2, so beyond that,
when the ``audit`` extra is installed, an HNSW index (hnswlib) of every image and its mirror image:
measured on 2 cores with 256 dimensions, 20,000 images took 18 s either way; 100,000 took 462 s
exact and 93 s with HNSW (1,080 img/s). HNSW is approximate (it may miss a neighbour: the recall
of the 10 nearest is checked in tests/test_audit.py) and, built on several threads, may differ
slightly between runs; the exact search repeats exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

try:  # the ``audit`` extra: an approximate index for large data sets
    import hnswlib
except ImportError:
    hnswlib = None

BLOCK = 1 << 24  # similarities held at once (64 MB of float32): batch rows x N
EXACT_UP_TO = 20_000  # images; above, HNSW when hnswlib is installed
HNSW = {"M": 16, "ef_construction": 100, "ef": 64}  # hnswlib's graph degree and search breadths


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


def nearest(plain: np.ndarray, mirrored: np.ndarray | None, k: int, progress=None) -> Neighbours:
    """The ``k`` nearest other rows of every row of ``plain`` (unit rows), mirror images counted.

    ``mirrored[i]`` is row ``i``'s mirror image; ``None`` compares the rows only as they are.
    """
    if len(plain) > EXACT_UP_TO and hnswlib is not None:
        return approximate(plain, mirrored, k)
    return exact(plain, mirrored, k, progress)


def approximate(plain: np.ndarray, mirrored: np.ndarray | None, k: int) -> Neighbours:
    """``nearest`` through an HNSW index of the rows and their mirror images (inner product = cosine)."""
    n = len(plain)
    k = max(0, min(k, n - 1))
    rows = plain if mirrored is None else np.concatenate([plain, mirrored])
    index = hnswlib.Index(space="ip", dim=plain.shape[1])
    index.init_index(max_elements=len(rows), ef_construction=HNSW["ef_construction"], M=HNSW["M"], random_seed=0)
    index.add_items(np.ascontiguousarray(rows, dtype=np.float32), np.arange(len(rows)))
    wanted = min(len(rows), (k + 1) * (1 if mirrored is None else 2))
    index.set_ef(max(HNSW["ef"], wanted))
    found, distance = index.knn_query(np.ascontiguousarray(plain, dtype=np.float32), k=wanted)
    found, similarity = found.astype(np.int64) % n, (1 - distance).astype(np.float32)  # ip space: 1 - <a, b>
    similarity[found == np.arange(n)[:, None]] = -np.inf  # an image is not its own neighbour
    # An image and its mirror image may both be among the hits: keep each neighbour once, at its best.
    order = np.lexsort((-similarity, found))  # by neighbour, then most similar first, per row
    found, similarity = np.take_along_axis(found, order, 1), np.take_along_axis(similarity, order, 1)
    repeated = np.zeros_like(found, dtype=bool)
    repeated[:, 1:] = found[:, 1:] == found[:, :-1]
    similarity[repeated] = -np.inf
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    out_index, out_sim = np.take_along_axis(found, top, 1), np.take_along_axis(similarity, top, 1)
    out_sim[~np.isfinite(out_sim)] = -1.0  # fewer distinct hits than k: as far as cosine goes
    return Neighbours(out_index, out_sim)


@torch.inference_mode()
def exact(plain: np.ndarray, mirrored: np.ndarray | None, k: int, progress=None) -> Neighbours:
    """``nearest`` by brute force, ``BLOCK`` similarities at a time."""
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
