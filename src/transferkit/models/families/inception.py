"""Inception v3 and GoogLeNet: their auxiliary classifiers are kept, replaced and trained (aux loss
0.4, torchvision's reference weight); the forward is not a chain, so they cut before the head."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout

# Both keep their auxiliary classifiers so they can be replaced and trained.
AUX_KWARGS = {"aux_logits": True, "init_weights": False}


class Inception3(TorchvisionFamily):
    prefixes = ("inception_v3",)
    classes = ("Inception3",)

    def build_kwargs(self, name: str, variant: str = "") -> dict:
        return AUX_KWARGS

    def layout(self, model) -> Layout:
        names = [n for n, _ in model.named_children() if n not in ("fc", "AuxLogits", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["AuxLogits.fc"], head_input="fc")


class GoogLeNet(TorchvisionFamily):
    prefixes = ("googlenet",)
    classes = ("GoogLeNet",)

    def build_kwargs(self, name: str, variant: str = "") -> dict:
        return AUX_KWARGS

    def layout(self, model) -> Layout:
        names = [n for n, _ in model.named_children() if n not in ("fc", "aux1", "aux2", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["aux1.fc2", "aux2.fc2"], head_input="fc")
