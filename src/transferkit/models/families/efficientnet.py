"""torchvision's EfficientNet B0-B7 and V2: MBConv stages in ``features``, pooling, then a
dropout + Linear classifier. (The packaged EfficientNet-Lite models are timm's: efficientnet_lite.py.)"""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, each_child


class EfficientNet(TorchvisionFamily):
    prefixes = ("efficientnet_b", "efficientnet_v2")
    classes = ("EfficientNet",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.1")
