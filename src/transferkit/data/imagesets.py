"""Collections of labelled images that hand out uint8 batches.

Built-in data sets live in memory as uint8 tensors (no per-image PIL); image files are decoded
once, at the model's input size, into the same uint8 form. Everything after that (resize,
normalise, 3 channels) happens on whole batches on the training device (transforms.py).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from transferkit.core.progress import log
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, load_uint8, unusable


class TensorImages:
    """Images already in memory: ``images`` is uint8 (N, C, H, W) with C = 1 or 3."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str,
                 paths: list[str] | None = None):
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)
        self.images = images.contiguous()
        self.labels = labels.long()
        self.classes = list(classes)
        self.name = name
        self.paths = paths

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def subset(self, index) -> "TensorImages":
        index = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths else None
        return TensorImages(self.images[index], self.labels[index], self.classes, self.name, paths)

    def fingerprint(self) -> str:
        """Content hash of images and labels: the feature cache is keyed by it."""
        digest = hashlib.sha256()
        digest.update(str(tuple(self.images.shape)).encode())
        digest.update(self.images.numpy().tobytes())
        digest.update(self.labels.numpy().tobytes())
        return digest.hexdigest()[:16]


class FileImages:
    """Image files with labels; ``decode(size)`` turns them into TensorImages once."""

    def __init__(self, paths: list[str], labels: list[int], classes: list[str], name: str):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.classes = list(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "FileImages":
        index = list(index)
        return FileImages([self.paths[i] for i in index], self.labels[index].tolist(), self.classes, self.name)

    def decode(self, size: int, interpolation: str = "bilinear", skip_bad: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS, progress=None) -> tuple[TensorImages, list[BadImage]]:
        """Decode every file at ``size``. Broken files are returned, never swapped for others."""
        def load(path):
            try:
                return load_uint8(path, size, interpolation, max_pixels)
            except BadImage as bad:
                return bad

        # PIL releases the GIL while decoding and resizing, so threads use every core.
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            results = list(progress(pool.map(load, self.paths), total=len(self.paths))
                           if progress else pool.map(load, self.paths))
        bad = [r for r in results if isinstance(r, BadImage)]
        keep = [i for i, r in enumerate(results) if not isinstance(r, BadImage)]
        if bad and not skip_bad:
            return None, bad
        arrays = [results[i] for i in keep]
        images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return TensorImages(images, self.labels[keep], self.classes, self.name,
                            [self.paths[i] for i in keep]), bad

    def fingerprint(self) -> str:
        """Paths, sizes, modification times and labels: changes when any file does."""
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
        return digest.hexdigest()[:16]


def decode_splits(sets: dict, size: int, interpolation: str = "bilinear", *, skip_bad: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS, progress=None, consequence: str = "",
                  announce: bool = True) -> dict:
    """``{split: image set}`` with every file-backed set decoded into uint8 tensors (the one policy
    for broken files, shared by train, eval, embed and export).

    Broken files are never swapped for other images: without ``skip_bad`` they stop the command
    with one error listing all of them (from every split); with it they are dropped and counted.
    """
    out, bad = {}, []
    for name, imageset in sets.items():
        if not hasattr(imageset, "decode"):
            out[name] = imageset  # already uint8 tensors in memory
            continue
        report = progress and (lambda it, total, name=name: progress(it, total=total, desc=f"decoding {name}", unit="img"))
        decoded, broken = imageset.decode(size, interpolation, True, max_pixels, progress=report)
        bad += broken
        out[name] = decoded
    if bad and not skip_bad:
        raise unusable(bad, consequence, "Fix or remove them, or pass --skip-bad to drop them")
    if bad and announce:
        log(f"--skip-bad: dropped {len(bad)} unusable image(s), e.g. {bad[0].path} ({bad[0].reason})")
    return out
