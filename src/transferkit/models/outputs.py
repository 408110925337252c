"""What a model's forward returns, made uniform: logits, plus any auxiliary logits.

Inception and GoogLeNet return a tuple in train mode, a user's model may return a tuple or an
object with ``.logits``; everything downstream (loss, scores, export, serving) wants the main
logits as one tensor. This is the one place that knows the shapes outputs come in.
"""
from __future__ import annotations

import torch
from torch import nn


def split_outputs(out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(main logits, [auxiliary logits])`` from whatever a forward returned."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, (tuple, list)):
        return out[0], [a for a in out[1:] if isinstance(a, torch.Tensor)]
    logits = getattr(out, "logits", None)  # named tuples and output classes
    if isinstance(logits, torch.Tensor):
        return logits, [a for a in (getattr(out, "aux_logits", None), getattr(out, "aux_logits2", None),
                                    getattr(out, "aux_logits1", None)) if isinstance(a, torch.Tensor)]
    return out, []


class Logits(nn.Module):
    """A network with one tensor out: exporters and runtimes want plain logits, not aux tuples."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return split_outputs(self.net(x))[0]
