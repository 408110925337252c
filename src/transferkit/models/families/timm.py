"""``timm/NAME``: any model of timm, by timm's own contract (see ``TimmFamily``). The EfficientNet
class of timm has a finer anatomy and its own file (efficientnet_lite.py)."""
from __future__ import annotations

from transferkit.models.family import TimmFamily


class Timm(TimmFamily):
    pass
