"""Where a model keeps its stages and its classifier: the ``Layout`` every family describes.

A ``Layout`` names, in forward order, the stages that ``--freeze N`` counts, the classifier
(and auxiliary classifiers) that the head replaces, and, where the model's forward is a plain
chain, that chain as tokens. The chain lets the feature cache cut the model at any stage
boundary: ``back(front(x)) == model(x)``. Models whose forward has code between stages (ViT,
Inception) still cut right before the classifier, through a hook on its input.

The helpers below are what the family files (``models/families/``) build their layouts from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transferkit.core.errors import UserError

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

    @property
    def heads(self) -> list[str]:
        """Module paths whose parameters form the new head(s): trained even when the backbone is frozen."""
        return [self.classifier, *self.aux]


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_module(model, parent), leaf, new)


def children(model: nn.Module, path: str) -> list[str]:
    return [f"{path}.{name}" for name, _ in get_module(model, path).named_children()]


def each_child(model: nn.Module, path: str) -> list[list[str]]:
    """One stage per child of ``path`` (``features.0``, ``features.1``, ...)."""
    return [[c] for c in children(model, path)]


def chain_layout(stages: list[list[str]], head: list[str], classifier: str, aux=()) -> Layout:
    """A model whose forward runs ``stages`` then ``head`` (module paths or FUNCTIONAL names) in order."""
    chain, ends = [], []
    for stage in stages:
        chain.extend(stage)
        ends.append(len(chain))
    return Layout(stages=stages, classifier=classifier, aux=list(aux), chain=chain + head, stage_ends=ends)


def last_linear(model: nn.Module) -> str:
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
