"""Inception v3 and GoogLeNet: their auxiliary classifiers are kept, replaced and trained (aux loss
0.4, torchvision's reference weight); the forward is not a chain, so they cut before the head.

Their ImageNet weights come from Google's TensorFlow training, on inputs scaled to [-1, 1].
torchvision feeds them ImageNet-normalised inputs and converts inside the model
(``transform_input=True``), which it switches on whenever it loads weights; a model built
without weights (as every family builds) has it off. So it is switched on here for any
pretrained weights (ImageNet or a file, as torchvision does for any weights), recorded in
``BackboneInfo.arch`` and switched on again when the run is rebuilt.
"""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout

# Both keep their auxiliary classifiers so they can be replaced and trained.
AUX_KWARGS = {"aux_logits": True, "init_weights": False}


class GoogleInputFamily(TorchvisionFamily):
    """What Inception v3 and GoogLeNet share: aux heads, and the input conversion of their weights."""

    def build_kwargs(self, name: str, variant: str = "") -> dict:
        return AUX_KWARGS

    def weight_settings(self, name: str, weights: str) -> dict:
        return {"transform_input": weights != "none"}

    def configure(self, model, settings: dict) -> None:
        model.transform_input = bool(settings.get("transform_input", False))


class Inception3(GoogleInputFamily):
    prefixes = ("inception_v3",)
    classes = ("Inception3",)

    def layout(self, model) -> Layout:
        names = [n for n, _ in model.named_children() if n not in ("fc", "AuxLogits", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["AuxLogits.fc"], head_input="fc")


class GoogLeNet(GoogleInputFamily):
    prefixes = ("googlenet",)
    classes = ("GoogLeNet",)

    def layout(self, model) -> Layout:
        names = [n for n, _ in model.named_children() if n not in ("fc", "aux1", "aux2", "dropout", "avgpool")]
        return Layout(stages=[[n] for n in names], classifier="fc", aux=["aux1.fc2", "aux2.fc2"], head_input="fc")
