"""The one contract every architecture family fulfils, and the two libraries most families come from.

A family is everything transferkit knows about one kind of network, in one file under
``models/families/`` (timm's idea: one interface for every model). It answers two questions:

- **by name** (``--model NAME``): can it build NAME, with which preprocessing (input size, mean,
  std, interpolation travel with the weights, never hard-coded), which pretrained weights
  ``--weights`` may name (``imagenet``, torchvision's ``IMAGENET1K_V1``, timm's tags), and where
  those come from (a cache, checked against the hash it recorded; a package; a download);
- **by model** (any ``nn.Module``, also one built by a user's code or torch.hub): where its
  stages and classifier are (``Layout``), how its head is replaced, and where it can be cut for
  the feature cache.

``TorchvisionFamily`` and ``TimmFamily`` hold what all families of those libraries share; a
family file adds its names, its layout and whatever it does differently.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.lazy import LazyModule
from transferkit.core.safeio import load_weights_file, sha256_file
from transferkit.data.transforms import Preprocess
from transferkit.models import heads
from transferkit.models.cut import split_layout
from transferkit.models.layout import Layout, last_linear
from transferkit.models.weights import (
    checked_sha256,
    download_failed,
    require_host,
    tensors_sha256,
    timm_cached_file,
    timm_cached_names,
    torch_hub_file,
)

timm = LazyModule("timm")
tvm = LazyModule("torchvision.models")

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
    weights: str = "none"  # as asked: imagenet | none | a file path | a weight name (IMAGENET1K_V1, timm/NAME.TAG)
    weights_source: str = "random init"
    weights_sha256: str | None = None
    imagenet_classes: list | None = field(default=None, repr=False)
    variant: str = ""      # the exact pretrained weights the family chose ("": its only or default ones)
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

    def build(self, name: str, num_classes: int, variant: str = "") -> tuple[nn.Module, dict]:
        """The architecture with no pretrained weights, shaped for the ``variant`` weights (see
        ``weights_variant``), and its preprocessing (input_size, mean, std, interpolation)."""
        raise NotImplementedError

    def weight_settings(self, name: str, weights: str) -> dict:
        """Architecture settings these weights need (``imagenet``, ``none`` or a path), recorded as
        ``BackboneInfo.arch`` so that a rebuilt run computes what the trained one did."""
        return {}

    def configure(self, model: nn.Module, settings: dict) -> None:
        """Apply ``weight_settings``' answer to a freshly built model (also when a run is rebuilt)."""

    def weights_variant(self, name: str, weights: str) -> str:
        """The exact pretrained weights ``--weights weights`` (imagenet or a weight name) means for
        ``name``, as a string ``build`` and ``pretrained_weights`` understand ("": the only ones).
        ``imagenet`` prefers weights already on this machine."""
        if weights == "imagenet":
            return ""
        raise UserError(f"--weights {weights}: no such file, and '{name}' has no weights by that name; "
                        "give imagenet, none or a PATH to .safetensors/.pth")

    def pretrained_weights(self, name: str, model: nn.Module, variant: str) -> tuple[dict, str, str]:
        """``(state_dict, where it came from, sha256)`` of ``name``'s ``variant`` pretrained weights."""
        raise UserError(f"'{name}' has no ImageNet weights; use --weights none or --weights PATH")

    def class_names(self, name: str, model: nn.Module, variant: str) -> list[str] | None:
        """The class names of the pretrained classifier: None means ImageNet-1k's, [] none known."""
        return None

    def weights_status(self, name: str) -> str:
        """One word for ``transferkit models``: where ImageNet weights would come from right now."""
        return "download"

    def weights_here(self, name: str) -> list[str]:
        """The names of ``name``'s pretrained weights that are on this machine now."""
        return []

    def library_names(self, name: str, variant: str) -> dict:
        """How other libraries build this architecture, for a run's config.json and model card:
        ``timm`` (a timm architecture whose state dict the run's weights fit), ``torchvision``
        (``(name, constructor kwargs)``), ``base_model`` (the Hub repo of the starting weights)."""
        return {}

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
    """Families whose models come from torchvision: built by name, weights from its enums
    (``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``)."""

    source = "torchvision"
    prefixes: tuple[str, ...] = ()   # torchvision model names of this family start with one of these
    classes: tuple[str, ...] = ()    # the torchvision classes it describes
    timm_names: tuple[str, ...] = ()  # models timm builds with the same state dict and the same maths

    def names(self) -> list[str]:
        return [n for n in torchvision_names() if n.startswith(self.prefixes)]

    def builds(self, name: str) -> bool:
        return name.startswith(self.prefixes) and name in torchvision_names()

    def describes(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.classes and type(model).__module__.startswith("torchvision.")

    def weights_enum(self, name: str, variant: str = ""):
        """The torchvision weights member: ``variant`` (a member name) or the DEFAULT one."""
        members = tvm.get_model_weights(name)
        return members[variant] if variant else members.DEFAULT

    def imagenet_members(self, name: str) -> list:
        """ImageNet-1k weights of ``name``, the DEFAULT first."""
        members = tvm.get_model_weights(name)
        return [members.DEFAULT, *(m for m in members if m is not members.DEFAULT and m.name.startswith("IMAGENET1K"))]

    def weights_variant(self, name: str, weights: str) -> str:
        members = tvm.get_model_weights(name)
        if weights == "imagenet":
            cached = [m for m in self.imagenet_members(name) if self.cache_file(name, m.name).is_file()]
            return (cached or [members.DEFAULT])[0].name
        enum_name, _, member = weights.rpartition(".")
        known = ", ".join(["DEFAULT", *(m.name for m in members)]) + f" (or {members.__name__}.NAME)"
        if enum_name and enum_name != members.__name__:
            raise UserError(f"--weights {weights}: those are weights of another model; {name} takes {known}")
        if member not in members.__members__:
            raise UserError(f"--weights {weights}: no such file, and not a weight name of {name}, which takes imagenet, "
                            f"none, PATH or {known}")
        return members[member].name  # DEFAULT is an alias: its member's own name is recorded

    def build_kwargs(self, name: str, variant: str = "") -> dict:
        """Extra constructor arguments (aux heads, image size) some families need."""
        return {}

    def build(self, name: str, num_classes: int, variant: str = "") -> tuple[nn.Module, dict]:
        preset = self.weights_enum(name, variant).transforms()
        model = tvm.get_model(name, weights=None, **self.build_kwargs(name, variant))
        return model, dict(input_size=int(preset.crop_size[0]), mean=tuple(preset.mean), std=tuple(preset.std),
                           interpolation=interpolation_name(preset.interpolation))

    def cache_file(self, name: str, variant: str = "") -> Path:
        """Where torch.hub keeps the downloaded file (the name carries the first hex digits of its sha256)."""
        return torch_hub_file(self.weights_enum(name, variant).url)

    def pretrained_weights(self, name: str, model: nn.Module, variant: str) -> tuple[dict, str, str]:
        member = self.weights_enum(name, variant)
        cached, url, what = self.cache_file(name, variant), member.url, f"torchvision weights {member}"
        if cached.is_file():
            return load_weights_file(cached), f"cache {cached}", checked_sha256(cached, what)
        where = urlparse(url)
        if where.scheme in ("http", "https"):  # a mirror may serve file:// URLs
            require_host(where.hostname, what, port=where.port or (443 if where.scheme == "https" else 80))
        try:
            # weights_only: the download is unpickled with no code allowed, like every file we read.
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
        except Exception as exc:  # URLError, hash mismatch (file removed by torch.hub), HTTP errors
            raise download_failed(what, exc) from None
        return load_weights_file(cached), f"download {url}", sha256_file(cached)

    def class_names(self, name: str, model: nn.Module, variant: str) -> list[str] | None:
        return list(self.weights_enum(name, variant).meta["categories"])

    def weights_status(self, name: str) -> str:
        return "cached" if self.weights_here(name) else "download"

    def weights_here(self, name: str) -> list[str]:
        return [m.name for m in self.imagenet_members(name) if self.cache_file(name, m.name).is_file()]

    def library_names(self, name: str, variant: str) -> dict:
        return {"torchvision": (name, dict(self.build_kwargs(name, variant))),
                **({"timm": name} if name in self.timm_names else {})}


class TimmFamily(Family):
    """``timm/NAME``: any timm model. timm's own contract (``forward_features`` then
    ``forward_head``) gives the stages and the one cut point before the classifier. Its weights
    are named by timm's pretrained tags (``timm/resnet50.a1_in1k``, or ``a1_in1k`` alone)."""

    source = "timm"

    def builds(self, name: str) -> bool:
        return name.startswith("timm/")

    def names(self) -> list[str]:
        """timm has over a thousand models: the ones listed are those whose weights are cached here."""
        return sorted({f"timm/{n.split('.')[0]}" for n in timm_cached_names()})

    def describes(self, model: nn.Module) -> bool:
        return type(model).__module__.startswith("timm.")

    def architecture(self, name: str) -> str:
        """timm's name for ``--model name`` (a pretrained tag included when given)."""
        return name[len("timm/"):]

    def weights_variant(self, name: str, weights: str) -> str:
        base, tag = timm.models.split_model_name_tag(self.architecture(name))
        if not timm.is_model(base):
            raise UserError(f"unknown timm model '{base}'; timm.list_models() lists them")
        if weights == "imagenet":
            if tag:
                return f"{base}.{tag}"
            default = timm.models.get_pretrained_cfg(base)
            if default is None:
                raise UserError(f"timm has no pretrained weights for {base}; use --weights none or PATH")
            tags = [f"{base}.{default.tag}"] + [t for t in timm.list_pretrained(f"{base}.*")
                                                if timm.models.get_pretrained_cfg(t).num_classes == 1000]
            return next((t for t in tags if timm_cached_file(t)), tags[0])
        given = weights.removeprefix("timm/")
        wbase, wtag = timm.models.split_model_name_tag(given) if "." in given else (base, given)
        if wbase != base:
            raise UserError(f"--weights {weights}: those are weights of {wbase}, the model is {base}")
        try:
            timm.models.get_pretrained_cfg(f"{base}.{wtag}")
        except RuntimeError:
            tags = ", ".join(f"timm/{t}" for t in timm.list_pretrained(f"{base}.*")[:12]) or "none"
            raise UserError(f"--weights {weights}: no such file, and not a pretrained tag of {base} "
                            f"(timm has: {tags})") from None
        return f"{base}.{wtag}"

    def build(self, name: str, num_classes: int, variant: str = "") -> tuple[nn.Module, dict]:
        arch = variant or self.architecture(name)
        try:
            model = timm.create_model(arch, pretrained=False)  # the tag's config: classes, input size, mean, std
        except RuntimeError as exc:  # timm's "Unknown model" or "Invalid pretrained tag"
            raise UserError(f"unknown timm model '{arch}': {exc}") from None
        cfg = model.pretrained_cfg
        return model, dict(input_size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                           interpolation=cfg.get("interpolation", "bicubic"))

    def pretrained_weights(self, name: str, model: nn.Module, variant: str) -> tuple[dict, str, str]:
        arch = variant or self.architecture(name)
        what = f"timm weights timm/{arch}"
        if cached := timm_cached_file(arch):
            return load_weights_file(cached), f"cache {cached}", checked_sha256(cached, what)
        require_host("huggingface.co", what)
        try:
            pretrained = timm.create_model(arch, pretrained=True)
        except Exception as exc:
            raise download_failed(what, exc) from None
        if cached := timm_cached_file(arch):  # the download landed in the cache: hash the file itself
            return load_weights_file(cached), f"download timm/{arch}", sha256_file(cached)
        state = pretrained.state_dict()
        return state, f"download timm/{arch}", tensors_sha256(state)

    def class_names(self, name: str, model: nn.Module, variant: str) -> list[str] | None:
        if model.num_classes == 1000:
            return None  # ImageNet-1k: torchvision's readable names, as for every other family
        subset = timm.data.infer_imagenet_subset(model)
        if subset is None:
            return []
        info = timm.data.ImageNetInfo(subset)
        return [info.index_to_description(i).split(",")[0] for i in range(model.num_classes)]

    def weights_status(self, name: str) -> str:
        return "cached" if self.weights_here(name) else "download"

    def weights_here(self, name: str) -> list[str]:
        base = timm.models.split_model_name_tag(self.architecture(name))[0]
        return [f"timm/{n}" for n in timm_cached_names() if n.split(".")[0] == base]

    def library_names(self, name: str, variant: str) -> dict:
        arch = variant or self.architecture(name)
        cfg = timm.models.get_pretrained_cfg(arch)
        return {"timm": timm.models.split_model_name_tag(arch)[0],
                **({"base_model": cfg.hf_hub_id} if variant and cfg is not None and cfg.hf_hub_id else {})}

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

