"""Your own models: ``path/file.py:Class``, names registered with ``@transferkit.register_backbone``
(or a ``transferkit.backbones`` entry point), and ``hub:owner/repo:entry`` from torch.hub.

Their anatomy is the general one: the last ``nn.Linear`` is the classifier (replaced for
``--head``, trained under ``--freeze backbone``) and the top-level children are the stages. A
model built by users' code is built for ``num_classes`` already, so under ``--head linear`` its
own last Linear is kept. The registry of names lives here, behind ``register``; nobody else
writes it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.models.family import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, Family
from transferkit.models.layout import Layout, last_linear
from transferkit.models.usercode import HUB_PREFIX, build_user_model, is_user_spec
from transferkit.models.weights import OFFLINE_HINT, tensors_sha256

# name -> (factory(num_classes=...) -> nn.Module, preprocessing given to register_backbone or None)
_REGISTERED: dict[str, tuple[Callable, dict | None]] = {}


def register(name: str, factory: Callable, preprocess: dict | None = None, replace: bool = True) -> None:
    """Make ``--model name`` build ``factory(num_classes=N)``; ``preprocess`` None: ImageNet's."""
    if replace or name not in _REGISTERED:
        _REGISTERED[name] = (factory, preprocess)


def register_backbone(name: str, *, input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Decorator: make ``--model name`` build ``factory(num_classes=N)`` (a user's nn.Module).

    ``input_size``, ``mean`` and ``std`` are what the model expects (stored in the run). The
    model's last ``nn.Linear`` is its classifier: trained even with ``--freeze backbone``.
    """
    def wrap(factory):
        register(name, factory, dict(input_size=int(input_size), mean=tuple(mean), std=tuple(std)))
        return factory

    return wrap


def registered(name: str) -> tuple[Callable, dict | None] | None:
    """``(factory, preprocessing given to the decorator or None)`` for a registered name."""
    return _REGISTERED.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTERED)


def forget_all() -> dict:
    """Empty the registry and return what it held (tests restore it with ``restore``)."""
    saved = dict(_REGISTERED)
    _REGISTERED.clear()
    return saved


def restore(saved: dict) -> None:
    _REGISTERED.clear()
    _REGISTERED.update(saved)


class OwnModel(Family):
    """The anatomy of any model without a family of its own (the fallback: describes everything)."""

    builds_for_classes = True

    def describes(self, model: nn.Module) -> bool:
        return True

    def layout(self, model: nn.Module) -> Layout:
        classifier = last_linear(model)
        top = classifier.split(".")[0]
        stages = [[n] for n, m in model.named_children() if n != top and any(True for _ in m.parameters())]
        return Layout(stages=stages, classifier=classifier, head_input=classifier)


class Named(OwnModel):
    """A model built by name; its anatomy is told by whichever family ``describes`` the built model."""

    def describes(self, model: nn.Module) -> bool:
        return False


class UserFile(Named):
    source = "user"

    def builds(self, name: str) -> bool:
        return is_user_spec(name)

    def build(self, name: str, num_classes: int, variant: str = ""):
        return build_user_model(name, num_classes), dict(IMAGENET)


class Registered(Named):
    source = "registered"

    def builds(self, name: str) -> bool:
        return name in _REGISTERED

    def names(self) -> list[str]:
        return registered_names()

    def weights_status(self, name: str) -> str:
        return "yours"

    def build(self, name: str, num_classes: int, variant: str = ""):
        factory, preprocess = _REGISTERED[name]
        try:
            model = factory(num_classes=num_classes)
        except TypeError as exc:
            raise UserError(f"registered backbone '{name}' must accept num_classes=..., calling it failed: {exc}") from None
        # Entry points may name a plain factory: ImageNet preprocessing unless registered otherwise.
        return model, dict(preprocess or IMAGENET)


class Hub(Named):
    """``hub:owner/repo:entry``: torch.hub runs the repository's hubconf.py (trusted repos only)."""

    source = "hub"
    builds_for_classes = False

    def builds(self, name: str) -> bool:
        return name.startswith(HUB_PREFIX)

    def build(self, name: str, num_classes: int, variant: str = ""):
        return self._load(name, pretrained=False), dict(IMAGENET)

    def pretrained_weights(self, name: str, model: nn.Module, variant: str):
        state = self._load(name, pretrained=True).state_dict()
        return state, f"torch.hub {name}", tensors_sha256(state)

    def _load(self, name: str, pretrained: bool) -> nn.Module:
        try:
            repo, entry = name[len(HUB_PREFIX):].rsplit(":", 1)
        except ValueError:
            raise UserError(f"hub model '{name}' must look like hub:owner/repo:entry") from None
        try:
            return torch.hub.load(repo, entry, pretrained=pretrained, trust_repo=True, verbose=False)
        except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError...)
            raise UserError(f"cannot load {name} from torch.hub ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); hub models need a network; {OFFLINE_HINT}") from None
