"""One dry forward of a real batch before training, so a size mistake in a user's layer is a
clear message naming the layer, not a traceback ten minutes into an epoch."""
from __future__ import annotations

import torch

from transferkit.errors import UserError


def _describe_input(args) -> str:
    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    return ", ".join(str(s) for s in shapes) or "no tensors"


def _expectation(module) -> str:
    if isinstance(module, torch.nn.Linear):
        return f"expects {module.in_features} input features"
    if isinstance(module, torch.nn.Conv2d):
        return f"expects {module.in_channels} input channels"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return f"expects {module.num_features} features"
    return f"({type(module).__name__})"


@torch.no_grad()
def check_shapes(net: torch.nn.Module, batch: torch.Tensor, num_classes: int) -> None:
    """Raise UserError naming the failing layer, its expectation and what it got."""
    entered: list[tuple[str, torch.nn.Module, tuple]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.append((name, mod, args)))
               for name, m in net.named_modules() if name and not list(m.children())]
    was_training = net.training
    net.eval()
    try:
        out = net(batch)
    except (RuntimeError, ValueError) as exc:
        if not entered:
            raise UserError(f"the model failed on a real batch of shape {tuple(batch.shape)}: {str(exc).splitlines()[0]}") from None
        name, module, args = entered[-1]
        previous = entered[-2][0] if len(entered) > 1 else "the input"
        raise UserError(f"shape mismatch: {name} {_expectation(module)}, got {_describe_input(args)} "
                        f"from {previous} ({str(exc).splitlines()[0]})") from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise UserError(f"the model returns shape {tuple(logits.shape)}, expected (batch, {num_classes}) "
                        f"for {num_classes} classes")
