"""ResNet, ResNeXt and Wide ResNet: a stem, then layer1-4 (one stage each), pooling and ``fc``."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout


class ResNet(TorchvisionFamily):
    prefixes = ("resnet", "resnext", "wide_resnet")
    classes = ("ResNet",)
    # timm's ResNets of these names have torchvision's parameter names and maths (checked in the
    # tests for resnet18): a run directory of one of them is also a timm model folder.
    timm_names = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

    def layout(self, model) -> Layout:
        return chain_layout([["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
                            ["avgpool", "flatten", "fc"], "fc")
