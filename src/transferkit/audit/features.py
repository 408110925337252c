"""The audit's view of the features: every split in one table (train, val, test), each row named,
reduced to at most ``DIMS`` dimensions and normalised, with its mirror image's row beside it.

Features come from ``train/features.backbone_features`` (the cache ``train --freeze backbone``
fills, so an audit and the training run that follows compute them once). They are read and
projected in chunks: what stays in memory is ``2 x N x DIMS`` float32 (200 MB at 100,000 images),
whatever the backbone's width. PCA (fitted on at most ``FIT_ROWS`` images) keeps the directions
that tell images apart, makes the neighbour pass ~5x cheaper than 1280 dimensions, and centres the
rows: cosine similarity then compares what differs between images, not what they all share.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

from transferkit.audit.neighbors import normalise
from transferkit.train.exclude import image_id
from transferkit.train.features import DataFeatures

DIMS = 256
FIT_ROWS = 20_000
CHUNK = 8192


@dataclass
class Table:
    x: np.ndarray            # (N, d) unit rows
    mirrored: np.ndarray     # (N, d) unit rows of the mirror images
    labels: np.ndarray       # (N,) int64
    split: np.ndarray        # (N,) split name of each row
    row: np.ndarray          # (N,) row within its split
    names: list              # path, or SPEC:SPLIT:ROW for images without a file
    digests: np.ndarray | None  # (N, 16) uint8 pixel digests, None when unknown
    offsets: dict            # split -> first row in the table


def _digests(images) -> np.ndarray | None:
    held = getattr(images, "digests", None)
    if held is None and hasattr(images, "fingerprint"):
        images.fingerprint(labels=False)  # in-memory sets compute them on first use
        held = getattr(images, "digests", None)
    if held is None:
        return None
    return held.read(images.rows) if hasattr(held, "read") else np.asarray(held)


def _chunks(records, n):
    for start in range(0, n, CHUNK):
        yield records.read_range(start, min(n, start + CHUNK)).astype(np.float32).reshape(min(n, start + CHUNK) - start, -1)


def build_table(data: DataFeatures, spec: str, dims: int = DIMS, seed: int = 0) -> Table:
    splits = [s for s in ("train", "val", "test") if s in data.features]
    sizes = {s: len(data.features[s]) for s in splits}
    offsets = dict(zip(splits, np.cumsum([0] + [sizes[s] for s in splits])[:-1].tolist()))
    n = sum(sizes.values())
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.permutation(n)[:FIT_ROWS])
    sample = []
    for s in splits:
        mine = fit_rows[(fit_rows >= offsets[s]) & (fit_rows < offsets[s] + sizes[s])] - offsets[s]
        if len(mine):
            sample.append(data.features[s].features.read(mine).astype(np.float32).reshape(len(mine), -1))
    sample = normalise(np.concatenate(sample))
    pca = PCA(n_components=max(1, min(dims, sample.shape[1], len(sample) - 1)), random_state=seed).fit(sample) \
        if len(sample) > 2 else None
    project = (lambda a: normalise(pca.transform(normalise(a)).astype(np.float32))) if pca else normalise  # noqa: E731

    def table(suffix):
        parts = [project(c) for s in splits for c in _chunks(data.features[s + suffix].features, sizes[s])]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)

    labels = np.concatenate([data.features[s].labels.numpy() for s in splits]).astype(np.int64)
    names = []
    for s in splits:
        paths = getattr(data.sets[s], "paths", None)
        names += list(paths) if paths else [image_id(spec, s, r) for r in range(sizes[s])]
    digests = [_digests(data.sets[s]) for s in splits]
    return Table(table(""), table(":mirrored"), labels, np.concatenate([[s] * sizes[s] for s in splits]).astype(str),
                 np.concatenate([np.arange(sizes[s]) for s in splits]).astype(np.int64), names,
                 np.concatenate(digests) if all(d is not None for d in digests) else None, offsets)
