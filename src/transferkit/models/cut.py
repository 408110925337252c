"""Cutting a model in two: a frozen front whose outputs the feature cache stores, and a back
that trains on them, with ``back(front(x)) == model(x)`` in eval mode."""
from __future__ import annotations

import torch
from torch import nn

from transferkit.models.layout import FUNCTIONAL, Layout, get_module
from transferkit.models.outputs import split_outputs
from transferkit.models.weights import tensors_sha256


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
        self.tokens = [type(model).__name__, f"input of {head_path}"]  # what the feature cache key names

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


def stateless(net: nn.Module, token: str) -> bool:
    """A chain step with nothing to train and nothing random (pooling, flatten): safe to cache through."""
    if token in FUNCTIONAL:
        return True
    module = get_module(net, token)
    has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())
    return not has_dropout and not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def split_layout(net: nn.Module, layout: Layout, cut: int) -> tuple[nn.Module, nn.Module] | None:
    """``(front, back)`` cut after ``cut`` stages, or None where this layout cannot be cut there."""
    if cut < 1:
        return None
    if layout.chain is not None:
        boundary = layout.stage_ends[min(cut, len(layout.stages)) - 1]
        if cut >= len(layout.stages):
            # Pooling and flattening have nothing to train: cache after them. 1280 numbers per image
            # instead of 1280x7x7 for EfficientNet. Dropout stays behind: it must stay random.
            while boundary < len(layout.chain) and stateless(net, layout.chain[boundary]):
                boundary += 1
        return Chain(net, layout.chain[:boundary]), Chain(net, layout.chain[boundary:])
    if cut < len(layout.stages) or not layout.head_input:
        return None
    return HeadInput(net, layout.head_input), get_module(net, layout.head_input)


def split_is_exact(net: nn.Module, front: nn.Module, back: nn.Module, x) -> bool:
    """Whether ``back(front(x)) == net(x)`` on a real batch (eval mode).

    Users' models are cut at their last nn.Linear's input (a hook). If their forward does more
    after that layer (a ReLU, a scale, a second call), training the cut model on cached features
    would train something other than what predict runs: the trainer then uses the plain loop.
    """
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            whole, _ = split_outputs(net(x))
            cut, _ = split_outputs(back(front(x)))
    finally:
        net.train(was_training)
    return (isinstance(whole, torch.Tensor) and isinstance(cut, torch.Tensor) and whole.shape == cut.shape
            and torch.allclose(whole.float(), cut.float(), rtol=1e-3, atol=1e-4))


def front_sha256(net: nn.Module, front: nn.Module, heads: list[str]) -> str:
    """A hash of the tensors ``front`` computes with (weights and buffers, by their names in
    ``net``), the new heads left out: some fronts hold the whole model and stop at the head.

    The feature cache is keyed by it, so a cache is only ever reused for the very weights that
    filled it, whatever the run believes it loaded (a resumed run, a file, a random init).
    """
    names = {id(t): n for n, t in net.state_dict(keep_vars=True).items()}
    tensors = {names.get(id(t), f"front.{n}"): t for n, t in front.state_dict(keep_vars=True).items()}
    return tensors_sha256({n: t for n, t in tensors.items() if not any(n == h or n.startswith(h + ".") for h in heads)})
