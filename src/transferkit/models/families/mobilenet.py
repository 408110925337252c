"""MobileNet V2, V3 and MNASNet: inverted-residual blocks, one stage each, then pooling and a
small classifier whose last Linear is replaced."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, each_child


class MobileNetV2(TorchvisionFamily):
    prefixes = ("mobilenet_v2",)
    classes = ("MobileNetV2",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "features"), ["adaptive_pool", "flatten", "classifier"], "classifier.1")


class MobileNetV3(TorchvisionFamily):
    prefixes = ("mobilenet_v3",)
    classes = ("MobileNetV3",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.3")


class MNASNet(TorchvisionFamily):
    prefixes = ("mnasnet",)
    classes = ("MNASNet",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "layers"), ["mean23", "classifier"], "classifier.1")
