"""``--mixup ALPHA`` and ``--cutmix ALPHA``: torchvision's v2 MixUp and CutMix on a training batch.

As in torchvision's reference recipe: each image is mixed with the next one in its batch, one
mixing ratio (and one box, for CutMix) per batch; with both flags each batch takes one of the two
with equal chance. Labels become probabilities (``lam`` of one class, ``1 - lam`` of the other),
and the loss takes them as targets, label smoothing applied on top (engine/loop.py). The draws are
seeded by (run seed, epoch, batch), so a resumed run mixes exactly as the run it continues.

Where it applies: on images in the plain loop (on the normalised batch: mixing is linear, so
mixing normalised images is normalising mixed ones). On the feature cache the images are gone,
so ``--mixup`` mixes the cached features instead (feature-space mixup, Verma et al.'s Manifold
Mixup at the cut: another technique, and the log says so) and ``--cutmix`` cuts boxes of cached
feature maps; pooled feature vectors have no places to cut, and train/paths.py refuses it there.
"""
from __future__ import annotations

import torch

from transferkit.core.lazy import LazyModule
from transferkit.data.augment.pipeline import MIX, row_seed, seeded

v2 = LazyModule("torchvision.transforms.v2")


class Mixing:
    def __init__(self, mixup: float, cutmix: float, num_classes: int, seed: int):
        self.mixup, self.cutmix, self.seed = float(mixup), float(cutmix), int(seed)
        chosen = ([v2.MixUp(alpha=self.mixup, num_classes=num_classes)] if self.mixup else []) + \
                 ([v2.CutMix(alpha=self.cutmix, num_classes=num_classes)] if self.cutmix else [])
        if not chosen:
            raise ValueError("Mixing needs --mixup or --cutmix above 0")
        self.transform = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)

    def describe(self) -> str:
        return " or ".join(f"{name} {alpha:g}" for name, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)) if alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mixed x, (N, classes) float label probabilities)`` for training batch ``b`` of ``epoch``."""
        if x.ndim != 4 and self.cutmix:
            raise ValueError("CutMix needs (N, C, H, W) batches")
        shaped = x if x.ndim == 4 else x.reshape(len(x), -1, 1, 1)  # MixUp's maths on any shape
        with seeded(row_seed(MIX, self.seed, epoch, b)):
            mixed, soft = self.transform(shaped, y)
        return mixed.reshape(x.shape), soft

