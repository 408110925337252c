"""Python objects -> transferkit image sets: a ``torch.utils.data.Dataset`` for ``fit``/``evaluate``,
and single images (PIL, tensors, arrays) for ``predict``.

Everything becomes the same uint8 ``(C, H, W)`` form the built-in data sets use, so the rest of
the pipeline (batched resize and normalisation, feature cache) is shared. Images are expected
*un-normalised*: uint8, or floats in [0, 1] as ``ToTensor()`` gives. transferkit normalises with
the backbone's own mean/std, so a ``Normalize`` in the Dataset's transform is a mistake it names.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.data.images import resize_center_crop, to_chw, to_rgb
from transferkit.data.imagesets import TensorImages
from transferkit.data.readers import parquet
from transferkit.data.specs import SPLIT_NAMES, DataSplits, with_val


def to_uint8_chw(image, where: str = "image") -> torch.Tensor:
    """A PIL image, a tensor (CHW/HWC/HW, uint8 or float in [0, 1]) or a numpy array -> uint8 (C, H, W)."""
    pil = sys.modules.get("PIL.Image")  # a PIL image means PIL is loaded: no import for tensor data
    if pil is not None and isinstance(image, pil.Image):
        return torch.from_numpy(to_chw(image if image.mode == "L" else to_rgb(image)))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image.copy())
        if image.ndim == 3 and image.shape[-1] in (1, 3) and image.shape[0] not in (1, 3):
            image = image.permute(2, 0, 1)  # numpy images are HWC
    if not isinstance(image, torch.Tensor):
        raise UserError(f"{where} is a {type(image).__name__}; give a PIL image, a tensor or a numpy array")
    x = image.detach().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise UserError(f"{where} has shape {tuple(x.shape)}; expected (C, H, W) with 1 or 3 channels")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise UserError(f"{where} has dtype {x.dtype}; give uint8 (0-255) or floats in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise UserError(f"{where} has values in [{low:.3g}, {high:.3g}]; give uint8 or floats in [0, 1] (ToTensor()), "
                        "without Normalize: transferkit normalises with the backbone's own mean/std")
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def fit_size(image: torch.Tensor, size: int, interpolation: str = "bilinear", where: str = "image") -> torch.Tensor:
    """Short side to ``size``, centre square kept: through the very resize image files get, so a
    file and the same picture in memory give identical pixels. uint8 ``(C, H, W)`` in and out."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    try:
        return torch.from_numpy(to_chw(resize_center_crop(picture, size, interpolation)))
    except ValueError as exc:  # a shape no resize can use (extreme aspect ratio), as files are refused
        raise UserError(f"{where}: {exc}") from None


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    channels = max(im.shape[0] for im in images)
    return torch.stack([im.expand(channels, -1, -1) for im in images])


class LooseImages:
    """Images of different sizes: brought to the model's input size once, by ``decode``, like files."""

    def __init__(self, images: list[torch.Tensor], labels: torch.Tensor, classes: list[str], name: str):
        self.images, self.labels, self.classes, self.name = images, labels.long(), list(classes), name

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "LooseImages":
        index = [int(i) for i in index]
        return LooseImages([self.images[i] for i in index], self.labels[index], self.classes, self.name)

    def decode(self, size: int, interpolation: str = "bilinear", skip_bad: bool = False, max_pixels: int = 0,
               progress=None) -> tuple[TensorImages, list]:
        fitted = [fit_size(im, size, interpolation, f"{self.name}[{i}]") for i, im in enumerate(self.images)]
        images = stack(fitted) if fitted else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return TensorImages(images, self.labels, self.classes, self.name), []


def _class_names(dataset) -> list[str] | None:
    """``dataset.classes`` (torchvision's convention), also through Subset wrappers."""
    while dataset is not None:
        names = getattr(dataset, "classes", None)
        if names is not None:
            return [str(c) for c in names]
        dataset = getattr(dataset, "dataset", None)
    return None


def _label(value, where: str):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (np.integer,)):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}: the label is a {type(value).__name__}; give an int class index or a class name")
    return value


def read_dataset(dataset, name: str, classes: list[str] | None = None):
    """``(images, labels, classes)`` from a Dataset whose items are ``(image, label)``."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise UserError(f"{name}: give a data SPEC string or a torch Dataset of (image, label) items, "
                        f"not a {type(dataset).__name__}")
    images, raw = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise UserError(f"{name}[{i}] must be an (image, label) pair, got {type(item).__name__}")
        images.append(to_uint8_chw(item[0], f"{name}[{i}]"))
        raw.append(_label(item[1], f"{name}[{i}]"))
    if not images:
        raise UserError(f"{name} is empty")
    classes = classes or _class_names(dataset)
    if all(isinstance(v, str) for v in raw):
        classes = classes or sorted(set(raw))
        unknown = sorted(set(raw) - set(classes))
        if unknown:
            raise UserError(f"{name}: labels {unknown[:5]} are not among the classes {classes[:10]}")
        labels = [classes.index(v) for v in raw]
    elif all(isinstance(v, int) for v in raw):
        classes = classes or [str(k) for k in range(max(raw) + 1)]
        if min(raw) < 0 or max(raw) >= len(classes):
            raise UserError(f"{name}: labels must be class indices 0..{len(classes) - 1}, got {min(raw)}..{max(raw)}")
        labels = raw
    else:
        raise UserError(f"{name}: labels mix ints and strings")
    return images, torch.tensor(labels, dtype=torch.long), classes


def image_set(dataset, name: str, classes: list[str] | None = None):
    """TensorImages when every image has one size (resized per batch later), else LooseImages."""
    images, labels, classes = read_dataset(dataset, name, classes)
    if len({tuple(im.shape[1:]) for im in images}) == 1:
        return TensorImages(stack(images), labels, classes, name), classes
    return LooseImages(images, labels, classes, name), classes


def dataset_splits(train, val=None, test=None, seed: int = 0):
    """DataSplits from Datasets; with no ``val``, 20% of each class of ``train`` is held out by ``seed``.
    Hugging Face ``datasets`` objects are read through Arrow, their images decoded once (parquet.py)."""
    if parquet.is_hf_dataset(train):
        return with_val(*parquet.hf_sets(train, val, test), seed)
    spec = f"python:{type(train).__name__}"
    train_set, classes = image_set(train, "train")
    sets = {"train": train_set, "val": image_set(val, "val", classes)[0] if val is not None else None,
            "test": image_set(test, "test", classes)[0] if test is not None else None}
    origins = {split: f"the Dataset given as {split}" for split, given in sets.items() if given is not None}
    return with_val(spec, classes, sets, origins, seed)


def evaluation_splits(dataset, split: str):
    """DataSplits holding ``dataset`` as ``split`` (what ``evaluate(run_dir, data=dataset)`` scores)."""
    if parquet.is_hf_dataset(dataset):
        spec, classes, sets, origins = parquet.hf_sets(dataset)
        if type(dataset).__name__ == "Dataset":  # one Dataset: it is the split asked for
            sets, origins = {split: sets["train"]}, {split: "the Dataset given"}
        return DataSplits(spec, classes, **{n: sets.get(n) for n in SPLIT_NAMES}, origins=origins)
    imageset, classes = image_set(dataset, split)
    return DataSplits(f"python:{type(dataset).__name__}", classes,
                      **{n: (imageset if n == split else None) for n in SPLIT_NAMES})
