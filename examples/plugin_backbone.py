"""A plugin that registers a backbone name: ``--model tiny_convnet`` once this file is loaded.

    transferkit --plugin examples/plugin_backbone.py models          # listed as "registered"
    transferkit --plugin examples/plugin_backbone.py train --data digits --model tiny_convnet \
        --weights none --freeze none --epochs 3 --lr 1e-2 --backbone-lr-scale 1 --out runs/tiny

The run copies this file into RUN_DIR/code/, so eval/predict/export/serve need no --plugin.
A package can provide names the same way through the ``transferkit.backbones`` entry-point
group (``[project.entry-points."transferkit.backbones"] tiny_convnet = "mypkg.nets:TinyConvNet"``).
Loading a plugin runs its code: use plugins you trust.
"""
import torch
from torch import nn

import transferkit


def conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# The preprocessing this model expects travels with it into every run (no hard-coded 224).
@transferkit.register_backbone("tiny_convnet", input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
class TinyConvNet(nn.Module):
    """Two conv blocks, global pooling, a linear classifier (the part --freeze backbone trains)."""

    def __init__(self, num_classes=1000, width=16):
        super().__init__()
        self.stem = conv_block(3, width)
        self.block = nn.Sequential(nn.MaxPool2d(2), conv_block(width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.pool(self.block(self.stem(x)))
        return self.fc(torch.flatten(x, 1))
