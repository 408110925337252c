"""The tutorial's custom layers and model (chapter 18), adapted to images, for transferkit.

Train the whole model from scratch:
    transferkit train --data digits --model examples/custom_layers.py:MyCustomModel --weights none \
        --freeze none --image-size 8 --epochs 5 --lr 1e-2 --backbone-lr-scale 1 --out runs/custom-model
(``--backbone-lr-scale 1``: nothing here is pretrained, so every layer learns at the full rate.)
Or put the tutorial's layers on top of a pretrained backbone, as a new head:
    transferkit train --data digits --model efficientnet_lite0 --image-size 32 \
        --head examples/custom_layers.py:TutorialHead --epochs 2 --out runs/custom-head

transferkit copies this file into the run directory, so the run keeps working after you move
or edit it. Keep everything the classes need in this one file (installed packages are fine).
"""
import torch
import torch.nn as nn


class MyCustomLayer(nn.Module):
    """Linear then ReLU (tutorial 1.1)."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)

    def forward(self, x):
        return torch.relu(self.linear(x))


class MyCustomLayerWithBatchNorm(nn.Module):
    """Linear, BatchNorm1d, ReLU (tutorial 1.3): the normalisation steadies training."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)
        self.batch_norm = nn.BatchNorm1d(output_size)

    def forward(self, x):
        return torch.relu(self.batch_norm(self.linear(x)))


class MyCustomModel(nn.Module):
    """The tutorial's model (2.1) for images: pool to a fixed grid, flatten, custom layers, classifier.

    transferkit builds it as ``MyCustomModel(num_classes=N)``. The adaptive pooling makes any
    ``--image-size`` work; the last ``nn.Linear`` is the classifier transferkit trains.
    """

    def __init__(self, num_classes=10, grid=8, hidden=64):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.layer1 = MyCustomLayer(3 * grid * grid, hidden)
        self.layer2 = MyCustomLayerWithBatchNorm(hidden, hidden // 2)
        self.classifier = nn.Linear(hidden // 2, num_classes)

    def forward(self, x):
        x = torch.flatten(self.pool(x), 1)
        x = self.layer2(self.layer1(x))
        return self.classifier(x)


class TutorialHead(nn.Module):
    """A new head for a pretrained backbone: built as ``TutorialHead(in_features, num_classes)``."""

    def __init__(self, in_features, num_classes, hidden=256):
        super().__init__()
        self.hidden = MyCustomLayerWithBatchNorm(in_features, hidden)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.hidden(x)))
