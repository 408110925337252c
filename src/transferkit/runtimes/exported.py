"""Exported files (ONNX, TorchScript, OpenVINO IR) opened as modules: what ``predict``/``serve --backend onnx`` run.

Every backend is an ``nn.Module`` taking preprocessed ``(N, 3, S, S)`` float32 and returning
logits, so ``predict_images`` and the server's batcher treat them alike. An exported file carries
its own classes and preprocessing, and the sha256 of the weights it came from: an export older
than ``model.safetensors`` is refused rather than silently answering with old weights.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.runtimes.engines import OpenVinoEngine

# Export formats, by the one name `export --format` and `predict`/`serve --backend` share (the
# engines that convert the run's own weights are onnxruntime and openvino: runtimes/engines.py).
FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript", "openvino-ir": "model.xml"}  # files in a run directory
META_KEY = "transferkit"  # ONNX metadata key / TorchScript extra file / OpenVINO rt_info key holding the JSON metadata


def export_paths(run_dir: str | Path, fmt: str) -> tuple[Path, Path]:
    """``(model file, sidecar JSON)`` of format ``fmt`` inside ``run_dir``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use {' or '.join(FORMATS)}")
    path = Path(run_dir) / FORMATS[fmt]
    return path, path.with_name(path.name + ".json")


class OnnxModule(nn.Module):
    """An onnxruntime session behind the nn.Module call convention (CPU tensors in and out)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # As many threads as torch would use: `serve --workers N` lowers that so workers share the cores.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def open_exported(fmt: str, path: str | Path) -> tuple[nn.Module, dict]:
    """``(module, metadata)`` from an exported file; the metadata is the dict export wrote into it."""
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("the onnx backend needs onnxruntime: `pip install 'transferkit[export]'`") from None
        try:
            module = OnnxModule(path)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"cannot open {path} with onnxruntime: {str(exc).splitlines()[0][:200]}") from None
        text = module.session.get_modelmeta().custom_metadata_map.get(META_KEY)
    elif fmt == "torchscript":
        extra = {META_KEY: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, OSError) as exc:
            raise UserError(f"cannot open {path} as TorchScript: {str(exc).splitlines()[0][:200]}") from None
        text = extra[META_KEY]
        text = text.decode() if isinstance(text, bytes) else text
    elif fmt == "openvino-ir":
        try:
            import openvino as ov
        except ImportError:
            raise UserError("an OpenVINO IR needs openvino: `pip install openvino`") from None
        try:
            model = ov.Core().read_model(str(path))
            text = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else ""
            precision = json.loads(text).get("precision", "fp32") if text else "fp32"
            # The hint the file was exported and checked with (bf16 or f32: never OpenVINO's default).
            module = OpenVinoEngine(path, "bf16" if precision == "bf16" else "fp32", mode="latency")
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"cannot open {path} with OpenVINO: {str(exc).splitlines()[0][:200]}") from None
    else:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    try:
        meta = json.loads(text) if text else {}
    except json.JSONDecodeError:
        meta = {}
    return module.eval(), meta
