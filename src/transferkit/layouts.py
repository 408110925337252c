"""Where each architecture keeps its stages and its classifier.

A ``Layout`` names, in forward order, the stages that ``--freeze N`` counts, the classifier
(and auxiliary classifiers) that ``replace_head`` swaps, and, where the model's forward is a
plain chain, that chain as tokens. The chain lets the feature cache cut the model at any stage
boundary: ``back(front(x)) == model(x)``. Models whose forward has code between stages (ViT,
Inception) still cut right before the classifier, through a hook on its input.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transferkit.errors import UserError

# Functional steps some torchvision forwards do between modules.
FUNCTIONAL = {
    "flatten": lambda x: torch.flatten(x, 1),
    "mean23": lambda x: x.mean([2, 3]),
    "relu": lambda x: torch.relu(x),
    "adaptive_pool": lambda x: nn.functional.adaptive_avg_pool2d(x, 1),
    "nhwc_to_nchw": lambda x: x.permute(0, 3, 1, 2),
}


@dataclass
class Layout:
    stages: list[list[str]]               # module paths per stage, forward order, head excluded
    classifier: str                        # path of the final classifier module
    aux: list[str] = field(default_factory=list)  # auxiliary classifiers (Inception, GoogLeNet)
    chain: list[str] | None = None         # the whole forward as module paths / FUNCTIONAL names
    stage_ends: list[int] | None = None    # chain index right after each stage
    head_input: str | None = None          # module whose input is the feature vector (non-chain cut)


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(model, parent), leaf, new)


def _children(model: nn.Module, path: str) -> list[str]:
    return [f"{path}.{name}" for name, _ in get_module(model, path).named_children()]


def _chain_layout(stages: list[list[str]], head: list[str], classifier: str, aux=()) -> Layout:
    chain, ends = [], []
    for stage in stages:
        chain.extend(stage)
        ends.append(len(chain))
    return Layout(stages=stages, classifier=classifier, aux=list(aux), chain=chain + head, stage_ends=ends)


def _group_by_pool(model: nn.Module, path: str) -> list[list[str]]:
    """VGG/AlexNet/SqueezeNet ``features``: one stage per block that ends in a max-pool."""
    stages, current = [], []
    for child in _children(model, path):
        current.append(child)
        if isinstance(get_module(model, child), nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages + ([current] if current else [])


def _each(model, path) -> list[list[str]]:
    return [[c] for c in _children(model, path)]


def _last_linear(model: nn.Module) -> str:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        # Decided: the last nn.Linear is what makes a model adaptable (replaced for --head,
        # kept training under --freeze backbone); a model without one has no head to find.
        raise UserError(f"{type(model).__name__} has no nn.Linear layer; transferkit treats a model's last "
                        "nn.Linear as its classifier, so end the model with nn.Linear(features, num_classes) "
                        "(e.g. after global pooling and flatten instead of a 1x1 convolution)")
    return last


def describe(model: nn.Module) -> Layout:
    kind = type(model).__name__
    timm_model = type(model).__module__.startswith("timm")
    if timm_model and kind == "EfficientNet":
        blocks = _each(model, "blocks")
        return _chain_layout([["conv_stem", "bn1"], *blocks, ["conv_head", "bn2"]],
                             ["global_pool", "classifier"], "classifier")
    if timm_model:
        # timm's contract: forward_features then forward_head; stages are its top-level children.
        classifier = model.pretrained_cfg.get("classifier") or _last_linear(model)
        top = classifier.split(".")[0]
        stages = [[n] for n, _ in model.named_children() if n != top and n not in ("global_pool", "head_drop", "fc_norm")]
        return Layout(stages=stages, classifier=classifier, head_input="__timm_head__")
    if kind == "ResNet":
        return _chain_layout([["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
                             ["avgpool", "flatten", "fc"], "fc")
    if kind in ("VGG", "AlexNet"):
        return _chain_layout(_group_by_pool(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.6")
    if kind == "SqueezeNet":
        return _chain_layout(_group_by_pool(model, "features"), ["classifier", "flatten"], "classifier.1")
    if kind == "DenseNet":
        feats = _children(model, "features")
        stages, current = [], []
        for child in feats:
            current.append(child)
            if child.split(".")[-1].startswith(("pool", "transition")):
                stages.append(current)
                current = []
        stages.append(current)
        return _chain_layout(stages, ["relu", "adaptive_pool", "flatten", "classifier"], "classifier")
    if kind == "MobileNetV2":
        return _chain_layout(_each(model, "features"), ["adaptive_pool", "flatten", "classifier"], "classifier.1")
    if kind == "MobileNetV3":
        return _chain_layout(_each(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.3")
    if kind == "EfficientNet":
        return _chain_layout(_each(model, "features"), ["avgpool", "flatten", "classifier"], "classifier.1")
    if kind == "MNASNet":
        return _chain_layout(_each(model, "layers"), ["mean23", "classifier"], "classifier.1")
    if kind == "ShuffleNetV2":
        return _chain_layout([["conv1", "maxpool"], ["stage2"], ["stage3"], ["stage4"], ["conv5"]],
                             ["mean23", "fc"], "fc")
    if kind == "RegNet":
        return _chain_layout([["stem"], *_each(model, "trunk_output")], ["avgpool", "flatten", "fc"], "fc")
    if kind == "ConvNeXt":
        return _chain_layout(_each(model, "features"), ["avgpool", "classifier"], "classifier.2")
    if kind == "SwinTransformer":
        return _chain_layout(_each(model, "features"), ["norm", "nhwc_to_nchw", "avgpool", "flatten", "head"], "head")
    if kind == "MaxVit":
        return _chain_layout([["stem"], *_each(model, "blocks")], ["classifier"], "classifier.5")
    if kind == "VisionTransformer":
        layers = _each(model, "encoder.layers")
        return Layout(stages=[["conv_proj"], *layers, ["encoder.ln"]], classifier="heads.head", head_input="heads")
    if kind == "Inception3":
        names = [n for n, _ in model.named_children() if n not in ("fc", "AuxLogits", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["AuxLogits.fc"], head_input="fc")
    if kind == "GoogLeNet":
        names = [n for n, _ in model.named_children() if n not in ("fc", "aux1", "aux2", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["aux1.fc2", "aux2.fc2"], head_input="fc")
    # A user's or torch.hub model: its last Linear is the classifier, its top-level children the stages.
    classifier = _last_linear(model)
    top = classifier.split(".")[0]
    stages = [[n] for n, m in model.named_children() if n != top and any(True for _ in m.parameters())]
    return Layout(stages=stages, classifier=classifier, head_input=classifier)
