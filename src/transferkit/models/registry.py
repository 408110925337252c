"""Names -> families -> backbones: ``create_backbone`` returns the ImageNet-shaped model plus a
``BackboneInfo`` that carries the preprocessing its weights were trained with, so nothing
downstream hard-codes 224 or ImageNet's mean/std."""
from __future__ import annotations

import difflib

from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.families import FAMILIES
from transferkit.models.families.custom import register_backbone, registered_names
from transferkit.models.family import BackboneInfo, Family, torchvision_names
from transferkit.models.layout import Layout
from transferkit.models.plugins import load_entry_points
from transferkit.models.weights import load_into, looks_like_file, resolve_file

DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = ["DEFAULT_BACKBONE", "BackboneInfo", "build_architecture", "create_backbone", "describe", "family_for",
           "family_of", "imagenet_class_names", "list_models", "register_backbone", "registered_names",
           "torchvision_names"]


def family_for(name: str) -> Family:
    """The family that builds ``--model name``; a user error naming close matches otherwise."""
    load_entry_points()  # installed plugins may register the name
    for family in FAMILIES:
        if family.builds(name):
            return family
    close = difflib.get_close_matches(name, [n for f in FAMILIES for n in f.names()], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"unknown model '{name}'{hint}; use a torchvision name, timm/NAME, hub:owner/repo:entry, "
                    "path/file.py:Class or one of `transferkit models`")


def family_of(model: nn.Module) -> Family:
    """The family whose anatomy ``model`` has (by its class; any model has the general one)."""
    return next(f for f in FAMILIES if f.describes(model))


def describe(model: nn.Module) -> Layout:
    return family_of(model).layout(model)


def build_architecture(name: str, num_classes: int = 1000, variant: str = "",
                       arch: dict | None = None) -> tuple[nn.Module, dict]:
    """The model for ``name`` with no pretrained weights, plus its preprocessing.

    Library models come with their pretrained classes (the head is replaced later); users'
    models are built for ``num_classes`` directly, since their code may size more than the last
    layer from it. ``variant``: the pretrained weights it is shaped for (``BackboneInfo.variant``).
    """
    family = family_for(name)
    model, pre = family.build(name, num_classes, variant)
    family.configure(model, arch or {})
    return model, pre


def create_backbone(name: str, weights: str = "imagenet", num_classes: int = 1000) -> tuple[nn.Module, BackboneInfo]:
    """Return ``(model, info)``: the pretrained-shaped model with weights loaded as asked.

    ``weights``: ``imagenet`` (the family's ImageNet weights, those already on this machine first),
    ``none``, a file, or a weight name the family knows (torchvision's ``DEFAULT`` /
    ``IMAGENET1K_V1`` / ``ResNet18_Weights.IMAGENET1K_V1``, timm's ``timm/resnet50.a1_in1k``).
    ``num_classes`` only sizes users' models (see build_architecture); a weights file with another
    number of classes still loads, its classifier left as initialised.
    """
    family = family_for(name)
    by_name = weights != "none" and not looks_like_file(weights)
    variant = family.weights_variant(name, weights) if by_name else ""
    model, pre = family.build(name, num_classes, variant)
    info = BackboneInfo(name=name, source=family.source, weights=weights, variant=variant,
                        arch=family.weight_settings(name, weights), **pre)
    family.configure(model, info.arch)
    if weights == "none":
        return model, info
    if by_name:
        state, info.weights_source, info.weights_sha256 = family.pretrained_weights(name, model, variant)
    else:
        state, info.weights_source, info.weights_sha256 = resolve_file(weights)
    load_into(model, state, name, heads=lambda: describe(model).heads)
    if by_name:
        names = family.class_names(name, model, variant)
        info.imagenet_classes = imagenet_class_names() if names is None else (names or None)
    return model, info


def list_models() -> list[tuple[str, str, str, list[str]]]:
    """``(name, weights status, source, weight names on this machine)`` for every name a family lists."""
    load_entry_points()
    rows = []
    for family in FAMILIES:
        for name in family.names():
            rows.append((name, family.weights_status(name), family.source, family.weights_here(name)))
    return rows


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights  # imported when asked: torchvision is slow to import

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
