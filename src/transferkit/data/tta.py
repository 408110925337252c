"""Test-time augmentation: ``--tta flip | crops | flip,crops`` for ``eval`` and ``predict``.

Each view is a function of a uint8 batch ``(N, C, H, W)``; ``prepare`` then resizes it to the model's
input size as usual. ``crops`` are the four corner crops of 7/8 of the side (the whole image is the
centre view), ``flip`` mirrors every view: ``flip,crops`` is the classic 10-crop evaluation. The
callers average the views' probabilities after the run's temperature (probability space, as AlexNet's
ten-patch evaluation did, Krizhevsky et al. 2012).
"""
from __future__ import annotations

from typing import Callable

import torch

from transferkit.core.errors import UserError

KINDS = ("flip", "crops")
CROP = 7 / 8  # of the side: small enough to move the content, large enough to keep it whole


def parse_tta(spec: str | None) -> tuple[str, ...]:
    """``"flip,crops"`` -> ``("flip", "crops")``; ``none`` or empty -> ``()``."""
    if spec in (None, "", "none"):
        return ()
    kinds = tuple(dict.fromkeys(part.strip() for part in str(spec).split(",") if part.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UserError(f"--tta {spec}: use flip, crops or flip,crops (or none)")
    return kinds


def _corner(top: bool, left: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def crop(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
        r, c = (0 if top else h - ch), (0 if left else w - cw)
        return x[..., r:r + ch, c:c + cw]
    return crop


def tta_views(kinds: tuple[str, ...]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The views to average, the unchanged image first."""
    views = [lambda x: x]
    if "crops" in kinds:
        views += [_corner(top, left) for top in (True, False) for left in (True, False)]
    if "flip" in kinds:
        views += [lambda x, view=view: view(x).flip(-1) for view in list(views)]
    return views
