"""AlexNet, VGG and SqueezeNet: plain convolution stacks in ``features``, one stage per block
that ends in a max-pool. SqueezeNet classifies with a 1x1 convolution, not a Linear."""
from __future__ import annotations

from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, children, get_module, set_module


def blocks_by_pool(model: nn.Module, path: str) -> list[list[str]]:
    stages, current = [], []
    for child in children(model, path):
        current.append(child)
        if isinstance(get_module(model, child), nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages + ([current] if current else [])


class VGG(TorchvisionFamily):
    prefixes = ("vgg", "alexnet")
    classes = ("VGG", "AlexNet")

    def layout(self, model: nn.Module) -> Layout:
        return chain_layout(blocks_by_pool(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.6")


class SqueezeNet(TorchvisionFamily):
    prefixes = ("squeezenet",)
    classes = ("SqueezeNet",)

    def layout(self, model: nn.Module) -> Layout:
        return chain_layout(blocks_by_pool(model, "features"), ["classifier", "flatten"], "classifier.1")

    def replace_head(self, model, layout, num_classes, spec="linear", keep_fitting=False) -> None:
        if spec not in ("linear", "", None):
            raise UserError("SqueezeNet's classifier is a 1x1 convolution; only --head linear fits it")
        old = get_module(model, layout.classifier)
        set_module(model, layout.classifier, nn.Conv2d(old.in_channels, num_classes, kernel_size=1))
        model.num_classes = num_classes
