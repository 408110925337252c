"""The robustness term of the choice: how a candidate's heads hold up on shifted views of held-out images.

Validation images in the training style can pick the recipe that transfers worst to another style
(other cameras, scanners, lighting). When the user has no validation images from the deployment
side, ``rank --robust W`` and ``train --budget ... --robust W`` also score each candidate's heads,
fitted on the sample's training images, on its validation images under a few ImageNet-C
corruptions (one per family, severity 3: noise, blur, weather, digital), and sort by
``(1 - W) x clean accuracy + W x corrupted accuracy``. The corrupted images' features are cached
like any other view (their key names the corruption, severity and seeds).
"""
from __future__ import annotations

import numpy as np

from transferkit.data.corrupt.views import Corrupted, CorruptionPool

CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast")
SEVERITY = 3


def corrupted_validation(got, names=CORRUPTIONS, severity: int = SEVERITY) -> tuple[np.ndarray, np.ndarray] | None:
    """``(features, labels)`` of the validation images of ``got`` (DataFeatures) under each corruption,
    stacked; None without validation images."""
    images = got.sets.get("val")
    if images is None or len(images) == 0:
        return None
    xs, ys = [], []
    with CorruptionPool() as pool:
        for name in names:
            features = got.cache.features(Corrupted(images, name, severity, got.pre, pool))
            xs.append(features.features.read_range(0, len(features)).astype(np.float32))
            ys.append(features.labels.numpy())
    return np.concatenate(xs), np.concatenate(ys)
