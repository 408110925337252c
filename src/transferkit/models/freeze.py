"""Which parameters train: ``--freeze none | backbone | N | name,name``.

Policy (decided once): a frozen module runs in eval mode, so its BatchNorm layers use and keep
their running statistics instead of the batch's, and its dropout is off. That is what makes a
frozen part a fixed function of its input, and what makes caching its output (features.py) exact.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.layout import Layout


@dataclass
class FreezePlan:
    frozen: list[str]        # module path prefixes that do not train
    cut: int | None          # stages [0, cut) are frozen as a whole: the cache can stop there
    spec: str


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def plan_freeze(model: nn.Module, layout: Layout, spec: str) -> FreezePlan:
    spec = str(spec).strip()
    heads = layout.heads
    n_stages = len(layout.stages)
    if spec in ("none", "0", ""):
        return FreezePlan([], 0 if spec == "0" else None, spec)
    if spec == "backbone" or (spec.isdigit() and int(spec) >= n_stages):
        # Everything except the heads ("__all__"), which is_frozen carves out.
        return FreezePlan(["__all__"], n_stages, "backbone")
    if spec.isdigit():
        n = int(spec)
        return FreezePlan([p for stage in layout.stages[:n] for p in stage], n, spec)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    known = {name for name, _ in model.named_modules()}
    for name in names:
        if name not in known:
            raise UserError(f"--freeze {spec}: the model has no module '{name}'; "
                            f"its stages are {', '.join(s[0] for s in layout.stages[:6])}...")
        if any(_under(h, name) or _under(name, h) for h in heads):
            raise UserError(f"--freeze {spec}: '{name}' contains the new head, which must train")
    # The frozen names cover the first k stages when they name every module of them that has
    # state (a ReLU or a pooling layer has nothing to freeze).
    def has_state(path: str) -> bool:
        module = model.get_submodule(path)
        return any(True for _ in module.parameters()) or any(True for _ in module.buffers())

    cut = 0
    for stage in layout.stages:
        if all(any(_under(p, n) for n in names) for p in stage if has_state(p)):
            cut += 1
        else:
            break
    return FreezePlan(names, cut if cut else None, spec)


def is_frozen(name: str, plan: FreezePlan, heads: list[str]) -> bool:
    if any(_under(name, h) for h in heads):
        return False
    if plan.frozen == ["__all__"]:
        return True
    return any(_under(name, p) for p in plan.frozen)


def apply_freeze(model: nn.Module, layout: Layout, plan: FreezePlan, require_trainable: bool = True) -> list[nn.Module]:
    """Set requires_grad; return the frozen modules (kept in eval mode by ``train_mode``).
    ``require_trainable=False``: a head fitted without gradients (few-shot) may have no parameters."""
    heads = layout.heads
    for name, param in model.named_parameters():
        param.requires_grad_(not is_frozen(name, plan, heads))
    frozen_modules = []
    for name, module in model.named_modules():
        if name and is_frozen(name, plan, heads) and not any(_under(h, name) for h in heads):
            frozen_modules.append(module)
    if require_trainable and not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"--freeze {plan.spec} leaves nothing to train")
    return frozen_modules


def train_mode(model: nn.Module, frozen_modules: list[nn.Module]) -> None:
    """model.train(), except frozen parts: their BatchNorm and dropout stay in eval mode."""
    model.train()
    for module in frozen_modules:
        module.eval()


def param_groups(model: nn.Module, layout: Layout, lr: float, weight_decay: float, backbone_lr_scale: float):
    """Head at ``lr``, unfrozen backbone at ``lr * backbone_lr_scale``; no decay on biases and norms."""
    heads = layout.heads
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_head = any(_under(name, h) for h in heads)
        no_decay = param.ndim <= 1
        groups.setdefault((in_head, no_decay), []).append(param)
    out = []
    for (in_head, no_decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": lr if in_head else lr * backbone_lr_scale,
                    "weight_decay": 0.0 if no_decay else weight_decay})
    return out
