"""A backbone with its new head: what ``train`` trains and every later command loads."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferkit.models.family import BackboneInfo, Family
from transferkit.models.layout import Layout
from transferkit.models.registry import build_architecture, create_backbone, family_for, family_of


@dataclass
class TransferModel:
    net: nn.Module
    info: BackboneInfo
    layout: Layout
    head: str
    num_classes: int
    family: Family  # the anatomy: layout, head replacement, cut points

    def split(self, cut: int) -> tuple[nn.Module, nn.Module] | None:
        """``(front, back)`` with ``back(front(x)) == net(x)`` in eval mode, cut after ``cut`` stages;
        None when this architecture cannot be cut there (its forward is not a chain)."""
        return self.family.split(self.net, self.layout, cut)


def _with_head(net: nn.Module, info: BackboneInfo, num_classes: int, head: str) -> TransferModel:
    family = family_of(net)
    layout = family.layout(net)
    # A model built by users' code for num_classes keeps its own last Linear under --head linear.
    family.replace_head(net, layout, num_classes, head, keep_fitting=family_for(info.name).builds_for_classes)
    return TransferModel(net, info, layout, head, num_classes, family)


def create_model(name: str, num_classes: int, weights: str = "imagenet", head: str = "linear") -> TransferModel:
    """``name``'s pretrained backbone with a fresh ``head`` for ``num_classes`` classes."""
    net, info = create_backbone(name, weights, num_classes)
    return _with_head(net, info, num_classes, head)


def rebuild_model(info: BackboneInfo, num_classes: int, head: str) -> TransferModel:
    """The architecture of a trained run, without any weights: the caller loads the run's own."""
    net, _ = build_architecture(info.name, num_classes, info.variant, info.arch)
    return _with_head(net, info, num_classes, head)
