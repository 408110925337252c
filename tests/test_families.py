"""Every architecture family keeps its contract (models/family.py), each under its own test id.

A family file is the one place that knows its names, weights, preprocessing, stages, head and
cut points; adding a family means adding its file and a representative here, which this suite
then checks: it builds, describes its own models, replaces the head, and cuts exactly.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferkit.core.errors import UserError
from transferkit.models.families import FAMILIES
from transferkit.models.families.custom import register
from transferkit.models.family import TorchvisionFamily, torchvision_names
from transferkit.models.layout import get_module
from transferkit.models.registry import family_for, family_of
from transferkit.models.transfer import create_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# family class -> (a small member's name, input size for a quick forward)
REPRESENTATIVE = {
    "EfficientNetLite": ("efficientnet_lite0", 64), "Timm": ("timm/resnet18", 64), "ResNet": ("resnet18", 64),
    "VGG": ("alexnet", 64), "SqueezeNet": ("squeezenet1_1", 64), "DenseNet": ("densenet121", 64),
    "MobileNetV2": ("mobilenet_v2", 64), "MobileNetV3": ("mobilenet_v3_small", 64), "MNASNet": ("mnasnet0_5", 64),
    "EfficientNet": ("efficientnet_b0", 64), "ShuffleNetV2": ("shufflenet_v2_x0_5", 64),
    "RegNet": ("regnet_x_400mf", 64), "ConvNeXt": ("convnext_tiny", 64), "Swin": ("swin_t", 64),
    "MaxViT": ("maxvit_t", 224), "VisionTransformer": ("vit_b_16", 224), "Inception3": ("inception_v3", 96),
    "GoogLeNet": ("googlenet", 64), "Registered": ("tiny-registered", 32),
    "UserFile": (f"{EXAMPLES / 'plugin_backbone.py'}:TinyConvNet", 32),
    "Hub": None,  # needs a network: its build is covered by tests/test_offline.py
    "OwnModel": None,  # describes models built by the three above; it builds nothing itself
}


def _ids(families):
    return [type(f).__name__ for f in families]


TESTED = [f for f in FAMILIES if REPRESENTATIVE.get(type(f).__name__)]


def test_every_family_has_a_representative():
    assert sorted(_ids(FAMILIES)) == sorted(REPRESENTATIVE)


def test_every_torchvision_name_belongs_to_exactly_one_family():
    owners = {name: [type(f).__name__ for f in FAMILIES if f.builds(name)] for name in torchvision_names()}
    assert {name: o for name, o in owners.items() if len(o) != 1} == {}


@pytest.mark.parametrize("family", TESTED, ids=_ids(TESTED))
def test_family_contract(family, isolated_registry):
    name, size = REPRESENTATIVE[type(family).__name__]
    if type(family).__name__ == "Registered":
        import torch.nn as nn

        register(name, lambda num_classes: nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                         nn.Linear(4, num_classes)))
    assert family_for(name) is family
    if isinstance(family, TorchvisionFamily):
        assert name in family.names()
    tm = create_model(name, 5, weights="none")
    anatomy = family_of(tm.net)
    # A family that builds by name hands the anatomy to the family that describes the model.
    assert anatomy is family or not family.describes(tm.net)
    assert tm.info.source == family.source and tm.info.input_size > 0 and len(tm.info.mean) == 3
    for path in tm.layout.heads:
        head = get_module(tm.net, path)
        assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 5, path
    assert tm.layout.stages, "a family names its stages: --freeze N counts them"
    tm.net.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = tm.net(x)
        front, back = tm.split(len(tm.layout.stages))  # the head-only cut always exists
        assert torch.allclose(back(front(x)), reference, atol=1e-4)
        if tm.layout.chain is not None:  # chains cut after any stage
            front, back = tm.split(1)
            assert torch.allclose(back(front(x)), reference, atol=1e-4)


def test_unknown_names_are_refused_with_close_matches():
    with pytest.raises(UserError, match="did you mean resnet18"):
        family_for("resnet-18")
