"""What an image set's pixels are, as a hash: the key of every cache that holds something computed from them.

Each image gets a 16-byte BLAKE2b digest of its decoded uint8 pixels. The decoded-image cache
computes them while decoding (in the worker that holds the bytes anyway) and keeps them after the
records; sets held in memory compute them on first use. An image set's fingerprint is the hash of
its images' digests in order (with the image shape), so the same pixels give the same fingerprint
whichever way they arrived: a folder or tar shards, the decoded-image cache or memory, a moved
folder, any ``--max-pixels`` that refuses none of them. A relabelled image keeps its digest.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

DIGEST = 16  # bytes per image


def digest(image) -> np.ndarray:
    """The digest of one image's uint8 pixels (any contiguous array or tensor)."""
    data = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.frombuffer(hashlib.blake2b(np.ascontiguousarray(data).data, digest_size=DIGEST).digest(), np.uint8)


def row_digests(images) -> np.ndarray:
    """``(N, DIGEST)`` uint8: one digest per image of an ``(N, ...)`` batch."""
    out = np.empty((len(images), DIGEST), dtype=np.uint8)
    for i in range(len(images)):
        out[i] = digest(images[i])
    return out


def fingerprint(shape: tuple, digests: np.ndarray, labels: torch.Tensor | None = None) -> str:
    """An image set's fingerprint: image shape, its images' digests in order, and the labels if given."""
    h = hashlib.sha256("x".join(str(int(d)) for d in shape).encode())
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    if labels is not None:
        h.update(b"|labels|" + labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]
