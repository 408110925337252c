"""A frozen PyTorch network as an ONNX file: the one conversion every engine starts from.

onnxruntime runs the file as it is and OpenVINO reads it directly (as fast as converting the
module with ``ov.convert_model``, and seconds quicker), so a network is exported once and each
engine is built from the same file. The export has a dynamic batch axis: the last, partial batch
of a data set and a server's batches of any size run on the same file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from transferkit.models.weights import tensors_sha256

OPSET = 17  # every onnxruntime since 1.13 and every OpenVINO since 2023 read it
INPUT, OUTPUT = "input", "output"


def static_same_pad(module: nn.Module, size: int) -> nn.Module:
    """A copy of ``module`` whose TF-style "same" convolutions (timm's ``Conv2dSame``, used by the
    ``tf_*`` EfficientNets) pad by constants computed for ``size``-pixel inputs.

    ``Conv2dSame`` computes its padding from the input shape at run time; exported as is, that is
    shape arithmetic (Shape, Gather, Ceil, ... Pad) before every such convolution: it costs
    onnxruntime a fifth to a third of its speed, and static int8 quantization quantizes the
    arithmetic itself, padding wrongly. With constant pads the file is exact for that input size,
    which is the only size a run ever feeds. Returns ``module`` itself when it has none.
    """
    if "timm.layers.conv2d_same" not in sys.modules:
        return module  # never imported, so no module here is one (and importing timm costs seconds)
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    if not any(isinstance(m, Conv2dSame) for m in module.modules()):
        return module
    module = copy.deepcopy(module).eval()
    sizes, hooks = {}, []
    for name, sub in module.named_modules():
        if isinstance(sub, Conv2dSame):
            hooks.append(sub.register_forward_pre_hook(
                lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))))
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    for name, (height, width) in sizes.items():
        conv = module.get_submodule(name)
        ph = get_same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pw = get_same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, conv.bias is not None)
        plain.weight, plain.bias = conv.weight, conv.bias
        padded = nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), plain)
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, padded)
    return module


def export_onnx(module: nn.Module, size: int, path: str | Path, input_name: str = INPUT, output_name: str = OUTPUT,
                opset: int = OPSET, example: torch.Tensor | None = None) -> None:
    """Write ``module`` (eval mode, CPU) as ONNX with a dynamic batch axis."""
    example = torch.zeros(2, 3, size, size) if example is None else example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        # dynamo=False: the torch.export-based exporter needs the onnxscript package and still
        # rejects some timm/torchvision graphs; the TorchScript-based one handles every backbone
        # we ship, and every use of the file is checked against PyTorch first.
        torch.onnx.export(static_same_pad(module.eval(), size), (example,), str(path), dynamo=False,
                          opset_version=opset, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          do_constant_folding=True)


def network_key(module: nn.Module, size: int, parts: dict | None = None) -> str:
    """What a conversion of ``module`` depends on: its tensors, its layers (with their settings),
    the input size, the caller's ``parts`` (model code, cut) and the exporter's version."""
    layers = hashlib.sha256(repr(module).encode()).hexdigest()
    full = {"tensors": tensors_sha256(module.state_dict()), "layers": layers, "size": size, "opset": OPSET,
            "torch": torch.__version__, "parts": parts or {}, "format": 1}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:20]
