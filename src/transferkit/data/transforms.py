"""Batched preprocessing on the training device: uint8 batch in, normalised float batch out.

One resize + normalise over a whole batch replaces per-image PIL transforms: the same maths
(antialiased interpolation, then (x/255 - mean)/std), many times the throughput.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"

    def to_json(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Preprocess":
        return cls(int(data["size"]), tuple(data["mean"]), tuple(data["std"]), data.get("interpolation", "bilinear"))

    def key(self) -> str:
        return f"{self.size}-{self.interpolation}-{','.join(f'{v:.4f}' for v in self.mean + self.std)}"


def resize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Antialiased resize to ``pre.size``; uint8 stays uint8 on the CPU (its SIMD kernels, like
    Pillow's, are several times faster than resizing floats) and rounds to whole levels as PIL does."""
    if x.shape[-2:] == (pre.size, pre.size):
        return x
    if x.dtype == torch.uint8 and x.device.type != "cpu":
        x = x.float()  # CUDA has no uint8 interpolation
    out = F.interpolate(x, size=(pre.size, pre.size), mode=pre.interpolation, align_corners=False, antialias=True)
    return out.clamp_(0, 255) if out.is_floating_point() else out  # bicubic overshoots past 0..255


def first_prepared(images, pre: Preprocess, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The first ``count`` images of an image set, prepared: a sample for checks and timings."""
    return prepare(images.batch(torch.arange(min(count, len(images)))), pre, device)


def prepare(batch: torch.Tensor, pre: Preprocess, device: torch.device | str = "cpu",
            channels_last: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, 1|3, H, W)`` uint8 -> ``(N, 3, size, size)`` normalised floats on ``device``."""
    batch = batch.to(device, non_blocking=True)
    mean = torch.tensor(pre.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    out = torch.empty((batch.shape[0], 3, pre.size, pre.size), device=batch.device, dtype=torch.float32,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # On the CPU, slices small enough for the resize's intermediates to stay in cache run about
    # twice as fast as the whole batch at once; a GPU wants the whole batch.
    step = 64 if batch.device.type == "cpu" else max(1, batch.shape[0])
    for start in range(0, batch.shape[0], step):
        x = resize(batch[start:start + step], pre)
        # (x - 255 mean) / (255 std) as one fused multiply-add that also broadcasts 1 channel to
        # 3 and writes straight into the memory layout the model wants.
        torch.addcmul(shift, x.float(), scale, out=out[start:start + step])
    return out if dtype == torch.float32 else out.to(dtype)


def flip_mask(n: int, seed: int, epoch: int, b: int) -> torch.Tensor:
    """Which rows of training batch ``b`` of ``epoch`` are mirrored under ``--augment flip``.

    One function for both training paths: the plain loop mirrors those images, the feature cache
    picks their mirrored features, so the two train on the same inputs (and a resumed run redraws
    the same choice)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + b)
    return torch.rand(n, generator=generator) < 0.5


def random_flip(batch: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the rows ``flip`` (a mask from ``flip_mask``) of a uint8 image batch."""
    out = batch.clone()
    out[flip] = batch[flip].flip(-1)
    return out


class Mirrored:
    """An image set seen in a mirror: what the feature cache stores for ``--augment flip``."""

    def __init__(self, images):
        self.inner, self.labels = images, images.labels
        self.name = f"{getattr(images, 'name', 'data')} (mirrored)"

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.inner.batch(index).flip(-1)

    def fingerprint(self, labels: bool = True) -> str:
        return f"{self.inner.fingerprint(labels=labels)}|mirrored"
