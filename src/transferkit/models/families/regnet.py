"""RegNet (X and Y): a stem, then the blocks of ``trunk_output`` (one stage each), pooling and ``fc``."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout, each_child


class RegNet(TorchvisionFamily):
    prefixes = ("regnet",)
    classes = ("RegNet",)

    def layout(self, model) -> Layout:
        return chain_layout([["stem"], *each_child(model, "trunk_output")], ["avgpool", "flatten", "fc"], "fc")
