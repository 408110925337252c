"""Near-duplicates: pairs of images that are much closer to each other than to the rest of their
neighbourhood, and images with identical decoded pixels, grouped into connected components (scipy's).

Similarity alone does not tell a copy from a look-alike: among thousands of plain garments on a
black background many distinct images are as similar (0.92-0.95) as a JPEG-recompressed or cropped
copy, while in a sparse region a copy stands far above every other neighbour. So a pair is joined
when its flip-invariant cosine similarity

- reaches ``THRESHOLD`` *and* exceeds the density around both images by ``MARGIN``, where an
  image's density is its similarity to its k-th nearest neighbour (k = the audit's K, 10: a group
  of up to k copies still has a non-copy there); or
- reaches ``CERTAIN``, whatever the neighbourhood (larger groups of close copies, tiny data sets).

A group with members in two splits is leakage: a validation or test image the model also
trained on (or its resized, re-encoded, mirrored or cropped copy) inflates the scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transferkit.audit.neighbors import Neighbours

# Measured with known copies (benchmarks/audit.py: 0.5x resized, JPEG q=50, mirrored, 5%-cropped
# copies of 2% of 5,000 Fashion-MNIST images) against the genuinely different images around them,
# on efficientnet_lite0's pooled features (benchmarks/RESULTS.md, "Near-duplicates").
THRESHOLD = 0.88  # flip-invariant cosine similarity a pair needs at the least
MARGIN = 0.12     # how far it must stand above both images' k-th neighbour (0: similarity alone)
CERTAIN = 0.96    # similarity that joins a pair whatever the neighbourhood


@dataclass
class Group:
    members: np.ndarray   # rows, in order
    similarity: float     # the smallest similarity that joins the group (1.0: identical pixels)
    exact: bool           # every member has the same decoded pixels


def joined(neighbours: Neighbours, threshold: float = THRESHOLD, margin: float = MARGIN) -> np.ndarray:
    """(N, k) bool: which neighbour pairs are copies by the rule above."""
    similarity = neighbours.similarity
    near = similarity >= threshold
    if margin <= 0 or not neighbours.k:
        return near
    density = similarity[:, -1]
    stands_out = similarity - np.maximum(density[:, None], density[neighbours.index]) > margin
    return near & (stands_out | (similarity >= max(threshold, CERTAIN)))


def duplicate_groups(neighbours: Neighbours, digests: np.ndarray | None, threshold: float = THRESHOLD,
                     margin: float = MARGIN) -> list[Group]:
    """Groups of two or more rows, most similar first. ``digests`` (N, 16) uint8: identical pixels."""
    n = len(neighbours.index)
    near = joined(neighbours, threshold, margin)
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
