"""Near-duplicates: images whose flip-invariant cosine similarity reaches ``THRESHOLD``, and
images with identical decoded pixels, grouped into connected components (scipy's).

A group with members in two splits is leakage: a validation or test image the model also
trained on (or its resized, re-encoded, mirrored or cropped copy) inflates the scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transferkit.audit.neighbors import Neighbours

# Flip-invariant cosine similarity of efficientnet_lite0's pooled features at which two images are
# called copies. Measured with known copies (benchmarks/audit.py: 0.5x resized, JPEG q=50, mirrored,
# 5%-cropped copies of 2% of the images) against the nearest genuinely different images.
THRESHOLD = 0.92


@dataclass
class Group:
    members: np.ndarray   # rows, in order
    similarity: float     # the smallest similarity that joins the group (1.0: identical pixels)
    exact: bool           # every member has the same decoded pixels


def duplicate_groups(neighbours: Neighbours, digests: np.ndarray | None, threshold: float = THRESHOLD) -> list[Group]:
    """Groups of two or more rows, most similar first. ``digests`` (N, 16) uint8: identical pixels."""
    n = len(neighbours.index)
    near = neighbours.similarity >= threshold
    src = np.repeat(np.arange(n), neighbours.k)[near.ravel()]
    dst = neighbours.index.ravel()[near.ravel()]
    weight = neighbours.similarity.ravel()[near.ravel()].astype(np.float64)
    if digests is not None and n:
        _, first, inverse = np.unique(digests.view(f"V{digests.shape[1]}").ravel(), return_index=True,
                                      return_inverse=True)
        same = np.flatnonzero(first[inverse] != np.arange(n))
        src, dst = np.concatenate([src, same]), np.concatenate([dst, first[inverse][same]])
        weight = np.concatenate([weight, np.full(len(same), 1.0)])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=count)
    joining = np.ones(count)
    if len(src):
        np.minimum.at(joining, component[src], np.minimum(weight, 1.0))
    exact_pairs = np.bincount(component[same], minlength=count) if digests is not None and n else np.zeros(count)
    order, ends = np.argsort(component, kind="stable"), np.cumsum(sizes)
    groups = [Group(np.sort(order[ends[c] - sizes[c]:ends[c]]), float(joining[c]), bool(exact_pairs[c] == sizes[c] - 1))
              for c in np.flatnonzero(sizes > 1)]
    groups.sort(key=lambda g: (-g.similarity, int(g.members[0])))
    return groups
