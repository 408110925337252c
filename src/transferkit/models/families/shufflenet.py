"""ShuffleNet V2: stem (conv1 + maxpool), stage2-4, conv5, then a mean over the spatial axes and ``fc``."""
from __future__ import annotations

from transferkit.models.family import TorchvisionFamily
from transferkit.models.layout import Layout, chain_layout


class ShuffleNetV2(TorchvisionFamily):
    prefixes = ("shufflenet_v2",)
    classes = ("ShuffleNetV2",)

    def layout(self, model) -> Layout:
        return chain_layout([["conv1", "maxpool"], ["stage2"], ["stage3"], ["stage4"], ["conv5"]], ["mean23", "fc"], "fc")
