"""One dry forward of a real batch before training, so a size mistake in a user's layer is a
clear message naming the layer, not a traceback ten minutes into an epoch.

The message names the failing layer by its path in the model, what it expects, the size it got
and the layer that produced it: "hidden.linear expects 100 input features, got 256 from conv".
"""
from __future__ import annotations

import torch
from torch import nn

from transferkit.core.errors import UserError

_CONV_DIMS = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


def _first_tensor(args) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _mismatch(module: nn.Module, x: torch.Tensor) -> str | None:
    """What ``module`` expects and what ``x`` gives it, when that is the problem; else None."""
    if isinstance(module, nn.Linear) and x.ndim >= 1 and x.shape[-1] != module.in_features:
        return f"expects {module.in_features} input features, got {x.shape[-1]}"
    for kind, ndim in _CONV_DIMS.items():
        if isinstance(module, kind):
            if x.ndim not in (ndim, ndim - 1):
                return f"expects a {ndim}-d input (batch, channels, ...), got shape {tuple(x.shape)}"
            got = x.shape[1] if x.ndim == ndim else x.shape[0]
            if got != module.in_channels:
                return f"expects {module.in_channels} input channels, got {got}"
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and x.ndim >= 2 and x.shape[1] != module.num_features:
        return f"expects {module.num_features} features (channels), got {x.shape[1]}"
    if isinstance(module, nn.LayerNorm):
        want = tuple(module.normalized_shape)
        if tuple(x.shape[-len(want):]) != want:
            return f"expects trailing size {want}, got {tuple(x.shape[-len(want):])}"
    return None


def _failure(exc: Exception, entered: list, finished: list, batch: torch.Tensor) -> UserError:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if not entered:
        return UserError(f"the model failed on a real batch of shape {tuple(batch.shape)}: {first_line}")
    name, module, args = entered[-1]
    done = [n for n, _ in finished]
    if name in done:
        # Every layer that started also finished: the error is in forward() code between layers.
        out = dict(finished)[name]
        return UserError(f"the model's forward() failed after layer {name} (its output has shape {_shape(out)}): "
                         f"{type(exc).__name__}: {first_line}")
    source = done[-1] if done else "the input images"
    x = _first_tensor(args)
    problem = _mismatch(module, x) if x is not None else None
    if problem:
        return UserError(f"shape mismatch: {name} {problem} from {source} (input shape {_shape(x)}); "
                         "fix the layer sizes in your model or head")
    return UserError(f"layer {name} ({type(module).__name__}) failed on input of shape {_shape(x)} from {source}: "
                     f"{type(exc).__name__}: {first_line}")


@torch.no_grad()
def check_shapes(net: nn.Module, batch: torch.Tensor, num_classes: int) -> None:
    """Raise UserError naming the failing layer, its expectation and what it got."""
    entered: list[tuple[str, nn.Module, tuple]] = []
    finished: list[tuple[str, object]] = []
    handles = []
    for name, module in net.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: entered.append((name, mod, args))))
            handles.append(module.register_forward_hook(
                lambda mod, args, out, name=name: finished.append((name, out))))
    was_training = net.training
    net.eval()  # no BatchNorm statistics updated by the check
    try:
        out = net(batch)
    except Exception as exc:  # whatever the model's own code raises is reported against its layer
        raise _failure(exc, entered, finished, batch) from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"the model returns a {type(logits).__name__}; it must return a tensor of logits "
                        f"of shape (batch, {num_classes})")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise UserError(f"the model returns shape {tuple(logits.shape)}, expected (batch, {num_classes}) "
                        f"for {num_classes} classes")
