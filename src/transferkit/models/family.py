"""The one contract every architecture family fulfils, and the two libraries most families come from.

A family is everything transferkit knows about one kind of network, in one file under
``models/families/`` (timm's idea: one interface for every model). It answers two questions:

- **by name** (``--model NAME``): can it build NAME, with which preprocessing (input size, mean,
  std, interpolation travel with the weights, never hard-coded), and where NAME's ImageNet
  weights come from;
- **by model** (any ``nn.Module``, also one built by a user's code or torch.hub): where its
  stages and classifier are (``Layout``), how its head is replaced, and where it can be cut for
  the feature cache.

``TorchvisionFamily`` and ``TimmFamily`` hold what all families of those libraries share; a
family file adds its names, its layout and whatever it does differently.
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torchvision.models as tvm
from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.safeio import load_weights_file, sha256_file
from transferkit.data.transforms import Preprocess
from transferkit.models import heads
from transferkit.models.cut import split_layout
from transferkit.models.layout import Layout, last_linear
from transferkit.models.weights import download_failed, require_host, tensors_sha256, timm_cached_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass
class BackboneInfo:
    """What a backbone needs from its input, and where its weights came from (stored in run.json)."""

    name: str
    source: str  # torchvision | timm | packaged | hub | user | registered
    input_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    weights: str = "none"  # imagenet | none | a file path
    weights_source: str = "random init"
    weights_sha256: str | None = None
    imagenet_classes: list | None = field(default=None, repr=False)
    # Constructor-level settings that go with the weights (Inception's transform_input), applied
    # again whenever the run is rebuilt; runs written before this field rebuild with none.
    arch: dict = field(default_factory=dict)

    def preprocess(self, size: int = 0) -> Preprocess:
        """The preprocessing these weights expect, at ``size`` pixels (0: the backbone's own size)."""
        return Preprocess(size or self.input_size, tuple(self.mean), tuple(self.std), self.interpolation)

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


class Family:
    """One architecture family. Subclasses override what differs; the defaults fit most."""

    source = ""            # where models of this family come from, as run.json records it
    builds_for_classes = False  # built for num_classes by users' code: its own last Linear is already the head

    def builds(self, name: str) -> bool:
        """Whether ``--model name`` is one of this family's models."""
        return False

    def names(self) -> list[str]:
        """The names ``transferkit models`` lists for this family."""
        return []

    def describes(self, model: nn.Module) -> bool:
        """Whether ``model`` (built by anyone) has this family's anatomy."""
        return False

    def build(self, name: str, num_classes: int) -> tuple[nn.Module, dict]:
        """The architecture with no pretrained weights, and its preprocessing (input_size, mean, std, interpolation)."""
        raise NotImplementedError

    def weight_settings(self, name: str, weights: str) -> dict:
        """Architecture settings these weights need (``imagenet``, ``none`` or a path), recorded as
        ``BackboneInfo.arch`` so that a rebuilt run computes what the trained one did."""
        return {}

    def configure(self, model: nn.Module, settings: dict) -> None:
        """Apply ``weight_settings``' answer to a freshly built model (also when a run is rebuilt)."""

    def imagenet_weights(self, name: str, model: nn.Module) -> tuple[dict, str, str]:
        """``(state_dict, where it came from, sha256)`` of ``name``'s ImageNet weights."""
        raise UserError(f"'{name}' has no ImageNet weights; use --weights none or --weights PATH")

    def weights_status(self, name: str) -> str:
        """One word for ``transferkit models``: where ImageNet weights would come from right now."""
        return "download"

    def layout(self, model: nn.Module) -> Layout:
        raise NotImplementedError

    def replace_head(self, model: nn.Module, layout: Layout, num_classes: int, spec: str = "linear",
                     keep_fitting: bool = False) -> None:
        heads.replace_head(model, layout, num_classes, spec, keep_fitting)

    def split(self, model: nn.Module, layout: Layout, cut: int) -> tuple[nn.Module, nn.Module] | None:
        """``(front, back)`` with ``back(front(x)) == model(x)`` in eval mode, cut after ``cut`` stages."""
        return split_layout(model, layout, cut)


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    return tuple(sorted(tvm.list_models(module=tvm)))


def interpolation_name(mode) -> str:
    value = getattr(mode, "value", mode)
    return "bicubic" if "bicubic" in str(value) else "bilinear"


class TorchvisionFamily(Family):
    """Families whose models come from torchvision: built by name, weights from its enums."""

    source = "torchvision"
    prefixes: tuple[str, ...] = ()   # torchvision model names of this family start with one of these
    classes: tuple[str, ...] = ()    # the torchvision classes it describes

    def names(self) -> list[str]:
        return [n for n in torchvision_names() if n.startswith(self.prefixes)]

    def builds(self, name: str) -> bool:
        return name in torchvision_names() and name.startswith(self.prefixes)

    def describes(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.classes and type(model).__module__.startswith("torchvision.")

    def weights_enum(self, name: str):
        return tvm.get_model_weights(name).DEFAULT

    def build_kwargs(self, name: str) -> dict:
        """Extra constructor arguments (aux heads, image size) some families need."""
        return {}

    def build(self, name: str, num_classes: int) -> tuple[nn.Module, dict]:
        preset = self.weights_enum(name).transforms()
        model = tvm.get_model(name, weights=None, **self.build_kwargs(name))
        return model, dict(input_size=int(preset.crop_size[0]), mean=tuple(preset.mean), std=tuple(preset.std),
                           interpolation=interpolation_name(preset.interpolation))

    def cache_file(self, name: str) -> Path:
        """Where torch.hub keeps the downloaded file (the name carries the first hex digits of its sha256)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.weights_enum(name).url)

    def imagenet_weights(self, name: str, model: nn.Module) -> tuple[dict, str, str]:
        cached, url = self.cache_file(name), self.weights_enum(name).url
        source = f"cache {cached}"
        if not cached.is_file():
            try:
                # weights_only: the download is unpickled with no code allowed, like every file we read.
                torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
            except Exception as exc:  # URLError, hash mismatch (file removed by torch.hub), HTTP errors
                raise download_failed(f"torchvision weights for {name}", exc) from None
            source = f"download {url}"
        return load_weights_file(cached), source, sha256_file(cached)

    def weights_status(self, name: str) -> str:
        return "cached" if self.cache_file(name).is_file() else "download"


class TimmFamily(Family):
    """``timm/NAME``: any timm model. timm's own contract (``forward_features`` then
    ``forward_head``) gives the stages and the one cut point before the classifier."""

    source = "timm"

    def builds(self, name: str) -> bool:
        return name.startswith("timm/")

    def describes(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith("timm.")

    def architecture(self, name: str) -> str:
        return name[len("timm/"):]

    def build(self, name: str, num_classes: int) -> tuple[nn.Module, dict]:
        arch = self.architecture(name)
        try:
            model = timm.create_model(arch, pretrained=False)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise UserError(f"unknown timm model '{arch}': {exc}") from None
        cfg = model.pretrained_cfg
        return model, dict(input_size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                           interpolation=cfg.get("interpolation", "bicubic"))

    def cached_weights(self, name: str):
        cached = timm_cached_file(self.architecture(name))
        return (load_weights_file(cached), f"cache {cached}", sha256_file(cached)) if cached else None

    def imagenet_weights(self, name: str, model: nn.Module) -> tuple[dict, str, str]:
        if found := self.cached_weights(name):
            return found
        arch = self.architecture(name)
        require_host("huggingface.co", f"timm weights for {arch}")
        try:
            pretrained = timm.create_model(arch, pretrained=True)
        except Exception as exc:
            raise download_failed(f"timm weights for {arch}", exc) from None
        if found := self.cached_weights(name):
            # The download landed in the Hugging Face cache: read it as every later run will, so the
            # recorded sha256 (the file's) is the same on the first run and after.
            return found[0], f"download timm/{arch}", found[2]
        state = pretrained.state_dict()  # weights from a plain URL: no file of ours to hash
        return state, f"download timm/{arch}", tensors_sha256(state)

    def weights_status(self, name: str) -> str:
        return "cached" if timm_cached_file(self.architecture(name)) else "download"

    def layout(self, model: nn.Module) -> Layout:
        classifier = model.pretrained_cfg.get("classifier") or last_linear(model)
        top = classifier.split(".")[0]
        stages = [[n] for n, _ in model.named_children() if n != top and n not in ("global_pool", "head_drop", "fc_norm")]
        return Layout(stages=stages, classifier=classifier)

    def split(self, model: nn.Module, layout: Layout, cut: int):
        if cut < len(layout.stages):
            return None
        return TimmFeatures(model), TimmHead(model)


class TimmFeatures(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.tokens = [type(model).__name__, "forward_features"]  # what the feature cache key names

    def forward(self, x):
        return self.model.forward_features(x)


class TimmHead(TimmFeatures):
    def forward(self, x):
        return self.model.forward_head(x)

