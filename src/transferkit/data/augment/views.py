"""Augmented views of an image set: what the feature cache stores for ``--views``.

``Augmented(images, augmentation, view, seed)`` is view ``view`` of every image: image ``i`` drawn
from the seed of (run seed, view, i), exactly what the plain loop feeds when it trains image ``i``
on that view (pipeline.view_seeds). Its fingerprint adds the augmentation, the view and the seed to
the pixels', so the cache key holds all that makes the features.
"""
from __future__ import annotations

import torch

from transferkit.data.augment.pipeline import Augmentation, view_seeds


class Augmented:
    def __init__(self, images, augmentation: Augmentation, view: int, seed: int):
        self.inner, self.labels = images, images.labels
        self.augmentation, self.view, self.seed = augmentation, int(view), int(seed)
        self.name = f"{getattr(images, 'name', 'data')} (view {self.view})"

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.augmentation(self.inner.batch(index), view_seeds(self.seed, self.view, index))

    def fingerprint(self, labels: bool = True) -> str:
        return (f"{self.inner.fingerprint(labels=labels)}|augment={self.augmentation.key()}"
                f"|view={self.view}|seed={self.seed}")
