"""A backbone with its new head, and the cut that splits it into a frozen front and a trainable back."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferkit.backbones import BackboneInfo, create_backbone
from transferkit.heads import USER_SOURCES, replace_head
from transferkit.layouts import FUNCTIONAL, Layout, describe, get_module


@dataclass
class TransferModel:
    net: nn.Module
    info: BackboneInfo
    layout: Layout
    head: str
    num_classes: int


def create_model(name: str, num_classes: int, weights: str = "imagenet", head: str = "linear") -> TransferModel:
    """``name``'s pretrained backbone with a fresh ``head`` for ``num_classes`` classes."""
    net, info = create_backbone(name, weights, num_classes)
    layout = describe(net)
    replace_head(net, layout, num_classes, head, keep_fitting=info.source in USER_SOURCES)
    return TransferModel(net, info, layout, head, num_classes)


class Chain(nn.Module):
    """Run a slice of a layout's chain: module paths and FUNCTIONAL steps, in order."""

    def __init__(self, model: nn.Module, tokens: list[str]):
        super().__init__()
        self.tokens = list(tokens)
        # Registered so that .train()/.eval()/.parameters() reach them; the modules stay the model's own.
        self.parts = nn.ModuleDict({str(i): get_module(model, t) for i, t in enumerate(tokens) if t not in FUNCTIONAL})

    def forward(self, x):
        for i, token in enumerate(self.tokens):
            x = FUNCTIONAL[token](x) if token in FUNCTIONAL else self.parts[str(i)](x)
        return x


class _Stop(Exception):
    pass


class HeadInput(nn.Module):
    """The input the model hands to its classifier, captured by a hook (for non-chain models)."""

    def __init__(self, model: nn.Module, head_path: str):
        super().__init__()
        self.model, self.head_path = model, head_path

    def forward(self, x):
        captured = {}

        def grab(_module, args):
            captured["x"] = args[0]
            raise _Stop

        handle = get_module(self.model, self.head_path).register_forward_pre_hook(grab)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["x"]


class TimmFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


class TimmHead(TimmFeatures):
    def forward(self, x):
        return self.model.forward_head(x)


def _stateless(net: nn.Module, token: str) -> bool:
    if token in FUNCTIONAL:
        return True
    module = get_module(net, token)
    has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())
    return not has_dropout and not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def split_model(tm: TransferModel, cut: int) -> tuple[nn.Module, nn.Module] | None:
    """``(front, back)`` with ``back(front(x)) == net(x)`` in eval mode, cut after ``cut`` stages.

    None when this architecture cannot be cut there (its forward is not a chain).
    """
    layout, net = tm.layout, tm.net
    if cut < 1:
        return None
    if layout.chain is not None:
        boundary = layout.stage_ends[min(cut, len(layout.stages)) - 1]
        if cut >= len(layout.stages):
            # Pooling and flattening have nothing to train: cache after them. 1280 numbers per image
            # instead of 1280x7x7 for EfficientNet. Dropout stays behind: it must stay random.
            while boundary < len(layout.chain) and _stateless(net, layout.chain[boundary]):
                boundary += 1
        return Chain(net, layout.chain[:boundary]), Chain(net, layout.chain[boundary:])
    if cut < len(layout.stages):
        return None
    if layout.head_input == "__timm_head__":
        return TimmFeatures(net), TimmHead(net)
    if layout.head_input:
        return HeadInput(net, layout.head_input), get_module(net, layout.head_input)
    return None


def split_is_exact(tm: TransferModel, front: nn.Module, back: nn.Module, x) -> bool:
    """Whether ``back(front(x)) == net(x)`` on a real batch (eval mode).

    Users' models are cut at their last nn.Linear's input (a hook). If their forward does more
    after that layer (a ReLU, a scale, a second call), training the cut model on cached features
    would train something other than what predict runs: the trainer then uses the plain loop.
    """
    import torch

    was_training = tm.net.training
    tm.net.eval()
    try:
        with torch.no_grad():
            whole = tm.net(x)
            cut = back(front(x))
    finally:
        tm.net.train(was_training)
    whole = whole[0] if isinstance(whole, (tuple, list)) else whole
    cut = cut[0] if isinstance(cut, (tuple, list)) else cut
    return (isinstance(whole, torch.Tensor) and isinstance(cut, torch.Tensor) and whole.shape == cut.shape
            and torch.allclose(whole.float(), cut.float(), rtol=1e-3, atol=1e-4))
