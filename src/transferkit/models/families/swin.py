"""Hierarchical vision transformers, Swin (V1, V2) and MaxViT: stages in ``features`` / ``blocks``.
Swin's features come out channels-last (NHWC): the forward permutes them before pooling."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, each_child


class Swin(TorchvisionFamily):
    prefixes = ("swin_",)
    classes = ("SwinTransformer",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "features"), ["norm", "nhwc_to_nchw", "avgpool", "flatten", "head"], "head")


class MaxViT(TorchvisionFamily):
    prefixes = ("maxvit",)
    classes = ("MaxVit",)

    def layout(self, model) -> Layout:
        return chain_layout([["stem"], *each_child(model, "blocks")], ["classifier"], "classifier.5")
