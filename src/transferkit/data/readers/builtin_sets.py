"""The built-in data sets, loaded as in-memory uint8 tensors.

- ``fashion-mnist``: official 60,000/10,000 split, read from Debian's ``dataset-fashion-mnist``
  package when installed, else from the transferkit data cache, else downloaded there.
- ``cifar10``: official 50,000/10,000 split via torchvision (download needs a network).
- ``digits``: scikit-learn's 1,797 8x8 digits, fixed stratified 80/20 train/test split.
- ``animal-shapes``, ``mnist-5k``, ``lfw-faces``: real sets shipped inside PyPI packages
  (``pip install 'transferkit[data]'``), see package_sets.py.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.data.readers import package_sets

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # where the Debian package installs it
BUILTINS = ("fashion-mnist", "cifar10", "digits", *package_sets.LOADERS)


def data_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("TRANSFERKIT_DATA", user_cache_dir("transferkit") + "/data"))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_fashion_dir() -> Path | None:
    candidates = [os.environ.get("TRANSFERKIT_FASHION_MNIST"), DEBIAN_FASHION_DIR, data_root() / "fashion-mnist"]
    for folder in filter(None, candidates):
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    return None


def load_fashion_mnist():
    folder = _find_fashion_dir()
    if folder is None:
        folder = data_root() / "fashion-mnist"
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(folder / "tv"), download=True)
        except Exception as exc:
            raise UserError(
                f"Fashion-MNIST is not on this machine and the download failed ({type(exc).__name__}); "
                "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) "
                "or put the four IDX .gz files in $TRANSFERKIT_FASHION_MNIST"
            ) from None
        raw = folder / "tv" / "FashionMNIST" / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (folder / f"{name}.gz").write_bytes((raw / f"{name}.gz").read_bytes())
    load = lambda name: torch.from_numpy(_read_idx(folder / f"{name}.gz").copy())  # noqa: E731
    return ((load("train-images-idx3-ubyte"), load("train-labels-idx1-ubyte")),
            (load("t10k-images-idx3-ubyte"), load("t10k-labels-idx1-ubyte")), FASHION_CLASSES)


def load_cifar10():
    from torchvision.datasets import CIFAR10

    root = data_root() / "cifar10"
    try:
        train, test = CIFAR10(str(root), train=True, download=True), CIFAR10(str(root), train=False, download=True)
    except Exception as exc:
        raise UserError(f"CIFAR-10 is not cached in {root} and the download failed ({type(exc).__name__}); "
                        "it needs a network once, or use --data fashion-mnist or digits offline") from None
    pair = lambda ds: (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))  # noqa: E731
    return pair(train), pair(test), CIFAR10_CLASSES


def load_digits():
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    idx = np.arange(len(images))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    pair = lambda i: (torch.from_numpy(images[np.sort(i)]), torch.from_numpy(digits.target[np.sort(i)]))  # noqa: E731
    return pair(tr), pair(te), [str(d) for d in range(10)]


LOADERS = {"fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10, "digits": load_digits, **package_sets.LOADERS}
