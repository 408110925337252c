"""ConvNeXt: downsampling and block stages in ``features``, pooling, then LayerNorm + Linear."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, each_child


class ConvNeXt(TorchvisionFamily):
    prefixes = ("convnext",)
    classes = ("ConvNeXt",)

    def layout(self, model) -> Layout:
        return chain_layout(each_child(model, "features"), ["avgpool", "classifier"], "classifier.2")
