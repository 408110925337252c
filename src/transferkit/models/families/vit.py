"""Vision Transformer (ViT B/L/H): patch projection, encoder layers, final LayerNorm. Its forward
adds the class token and position embedding between stages, so it is cut only before the head."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, each_child


class VisionTransformer(TorchvisionFamily):
    prefixes = ("vit_",)
    classes = ("VisionTransformer",)

    def build_kwargs(self, name: str, variant: str = "") -> dict:
        # A ViT's position embedding is sized for its weights' resolution (vit_h_14's default is 518 px).
        return {"image_size": int(self.weights_enum(name, variant).meta["min_size"][0])}

    def layout(self, model) -> Layout:
        return Layout(stages=[["conv_proj"], *each_child(model, "encoder.layers"), ["encoder.ln"]],
                      classifier="heads.head", head_input="heads")
