"""``--feature-augment``: augmentation of cached features (FroFA: Baer et al., "Frozen Feature
Augmentation for Few-Shot Image Classification", CVPR 2024).

FroFA found that simple pixel-style transforms applied to the frozen features themselves help
a head trained on them, channel-wise brightness ("c2FroFA") most. The variant here is that one:
each training image's features get, per channel, an offset ``strength x u x s`` with ``u``
uniform in [-1, 1] and ``s`` that image's feature standard deviation (the paper rescales features
to [0, 1] with the data's minimum and maximum; the per-image scale needs no pass over the data
and does not depend on the batch). A channel is a feature map's channel (the offset is the same
at every place of the map), a token's last axis, or each dimension of a pooled vector. Draws are
seeded by (run seed, epoch, batch). Only training batches are touched.

Grammar: ``auto | none | brightness[:STRENGTH]`` (default strength 0.5). ``auto`` (the default) is
brightness where stages train on cached features (``--freeze N`` on the feature cache) and none
elsewhere: there it measured the same clean accuracy as none on four built-ins and 4-7 points more
under corruptions on three (benchmarks/RESULTS.md, "Augmentation"), at no cost; on head-only
training it did not help, and the plain loop has no cached features to perturb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transferkit.core.errors import UserError
from transferkit.data.augment.pipeline import FEATURES, row_seed

DEFAULT_STRENGTH = 0.5


@dataclass(frozen=True)
class ChannelBrightness:
    strength: float
    seed: int

    def describe(self) -> str:
        return f"brightness:{self.strength:g}"

    def __call__(self, x: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        if len(x) == 0:
            return x
        channel = x.ndim - 1 if x.ndim == 3 else 1  # tokens (N, T, D): the embedding axis
        generator = torch.Generator().manual_seed(row_seed(FEATURES, self.seed, epoch, b))
        u = torch.rand((len(x), x.shape[channel]), generator=generator).to(x.device) * 2 - 1
        scale = x.detach().flatten(1).float().std(1, correction=0)
        shape = [len(x)] + [x.shape[d] if d == channel else 1 for d in range(1, x.ndim)]
        return x + (self.strength * u * scale[:, None]).reshape(shape).to(x.dtype)


def parse_feature_augment(text: str, seed: int, partial_cached: bool = False) -> ChannelBrightness | None:
    """The feature augmentation ``text`` names; ``auto`` is brightness only where ``partial_cached``
    (stages train on cached features), else none."""
    name, _, raw = str(text).strip().lower().partition(":")
    if name in ("", "none", "auto") and not raw:
        return ChannelBrightness(DEFAULT_STRENGTH, int(seed)) if name == "auto" and partial_cached else None
    if name != "brightness":
        raise UserError(f"--feature-augment '{text}': give auto, none or brightness[:STRENGTH] (e.g. brightness:0.5)")
    try:
        strength = float(raw) if raw else DEFAULT_STRENGTH
    except ValueError:
        strength = -1.0
    if not (math.isfinite(strength) and strength > 0):
        raise UserError(f"--feature-augment '{text}': the strength must be a positive number, e.g. brightness:0.5")
    return ChannelBrightness(strength, int(seed))
