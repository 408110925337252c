"""DenseNet: ``features`` split into stages after each pooling and transition layer; the forward
applies a ReLU and global pooling between the features and the classifier."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, children


class DenseNet(TorchvisionFamily):
    prefixes = ("densenet",)
    classes = ("DenseNet",)

    def layout(self, model) -> Layout:
        stages, current = [], []
        for child in children(model, "features"):
            current.append(child)
            if child.split(".")[-1].startswith(("pool", "transition")):
                stages.append(current)
                current = []
        stages.append(current)
        return chain_layout(stages, ["relu", "adaptive_pool", "flatten", "classifier"], "classifier")
