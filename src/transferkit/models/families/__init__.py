"""Every architecture family transferkit knows, one file each (see ``models/family.py`` for the
contract). Order matters twice: a name is built by the first family that ``builds`` it, and a
model is described by the first family that ``describes`` it (``OwnModel``, last, takes any).
To add a family: write its file here and put an instance in ``FAMILIES``.
"""
from transferkit.models.families.convnext import ConvNeXt
from transferkit.models.families.custom import Hub, OwnModel, Registered, UserFile
from transferkit.models.families.densenet import DenseNet
from transferkit.models.families.efficientnet import EfficientNet
from transferkit.models.families.efficientnet_lite import EfficientNetLite
from transferkit.models.families.inception import GoogLeNet, Inception3
from transferkit.models.families.mobilenet import MNASNet, MobileNetV2, MobileNetV3
from transferkit.models.families.regnet import RegNet
from transferkit.models.families.resnet import ResNet
from transferkit.models.families.shufflenet import ShuffleNetV2
from transferkit.models.families.swin import MaxViT, Swin
from transferkit.models.families.timm import Timm
from transferkit.models.families.vgg import VGG, SqueezeNet
from transferkit.models.families.vit import VisionTransformer

TORCHVISION = (ResNet(), VGG(), SqueezeNet(), DenseNet(), MobileNetV2(), MobileNetV3(), MNASNet(), EfficientNet(),
               ShuffleNetV2(), RegNet(), ConvNeXt(), Swin(), MaxViT(), VisionTransformer(), Inception3(), GoogLeNet())
# Registered names come before the libraries' names: a plugin may deliberately reuse one.
FAMILIES = (EfficientNetLite(), Registered(), Timm(), *TORCHVISION, UserFile(), Hub(), OwnModel())
