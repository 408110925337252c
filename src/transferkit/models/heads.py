"""New classifiers for new classes: ``--head linear | mlp:512[,256][,dropout=0.2][,bn] | prototype | knn:K |
file.py:Class`` (the last two fitted without gradient steps: fewshot.py).

The head replaces the architecture's final layer in place (the path comes from its Layout), so
the model keeps its own forward (pooling, dropout, aux heads) and its familiar parameter names.
"""
from __future__ import annotations

from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.fewshot import is_fewshot, make_fewshot_head
from transferkit.models.layout import Layout, get_module, set_module
from transferkit.models.usercode import build_user_head


def parse_mlp(spec: str) -> dict:
    widths, dropout, bn = [], 0.0, False
    for part in filter(None, spec.split(":", 1)[1].split(",") if ":" in spec else []):
        part = part.strip()
        if part == "bn":
            bn = True
        elif part.startswith("dropout="):
            try:
                dropout = float(part.split("=", 1)[1])
            except ValueError:
                raise UserError(f"--head {spec}: dropout must be a number, got '{part}'") from None
            if not 0 <= dropout < 1:
                raise UserError(f"--head {spec}: dropout must be in [0, 1)")
        elif part.isdigit() and int(part) > 0:
            widths.append(int(part))
        else:
            raise UserError(f"--head {spec}: cannot read '{part}'; example: mlp:512,256,dropout=0.2,bn")
    if not widths:
        raise UserError(f"--head {spec}: give at least one hidden width, for example mlp:512")
    return {"widths": widths, "dropout": dropout, "bn": bn}


class MLPHead(nn.Module):
    """Linear -> [BatchNorm1d] -> ReLU -> [Dropout] blocks, then the classifier."""

    def __init__(self, in_features: int, num_classes: int, widths=(512,), dropout: float = 0.0, bn: bool = False):
        super().__init__()
        layers, width = [], in_features
        for out in widths:
            layers += [nn.Linear(width, out)]
            layers += [nn.BatchNorm1d(out)] if bn else []
            layers += [nn.ReLU(inplace=True)]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = out
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.hidden(x))


def make_head(spec: str, in_features: int, num_classes: int) -> nn.Module:
    if spec in ("linear", "", None):
        return nn.Linear(in_features, num_classes)
    if spec.startswith("mlp"):
        return MLPHead(in_features, num_classes, **parse_mlp(spec))
    if is_fewshot(spec):
        return make_fewshot_head(spec, in_features, num_classes)
    if ".py:" in spec:
        return build_user_head(spec, in_features, num_classes)
    raise UserError(f"unknown --head '{spec}'; use linear, mlp:512[,256][,dropout=0.2][,bn], prototype, knn:K "
                    "or path/file.py:Class")


def in_features_of(module: nn.Module) -> int:
    for attr in ("in_features", "in_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise UserError(f"cannot tell the input width of classifier {type(module).__name__}")


def replace_head(model: nn.Module, layout: Layout, num_classes: int, spec: str = "linear",
                 keep_fitting: bool = False) -> None:
    """Swap the final classifier (and any auxiliary ones) for ``num_classes`` outputs.

    ``keep_fitting``: a user's model built for ``num_classes`` keeps its own last nn.Linear under
    ``--head linear`` (its init, its bias choice); only another head spec replaces it.
    """
    old = get_module(model, layout.classifier)
    if keep_fitting and spec in ("linear", "", None) and isinstance(old, nn.Linear) and old.out_features == num_classes:
        return
    set_module(model, layout.classifier, make_head(spec, in_features_of(old), num_classes))
    for path in layout.aux:
        aux = get_module(model, path)
        set_module(model, path, nn.Linear(aux.in_features, num_classes))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
