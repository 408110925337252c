"""Inference backends for predict and serve: the run's PyTorch model, or its exported file.

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

from transferkit.errors import UserError

BACKENDS = ("torch", "onnx", "torchscript")


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
    from transferkit.export import META_KEY

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
    else:
        raise UserError(f"unknown backend '{fmt}'; use one of {', '.join(BACKENDS)}")
    try:
        meta = json.loads(text) if text else {}
    except json.JSONDecodeError:
        meta = {}
    return module.eval(), meta


def load_exported(run_dir: str | Path, fmt: str):
    """``(module, Preprocess, classes)`` from ``RUN_DIR/model.<fmt>``, checked against the run's weights."""
    from transferkit.export import export_paths
    from transferkit.rundir import read_run
    from transferkit.safeio import sha256_file
    from transferkit.transforms import Preprocess

    read_run(run_dir)  # a clear error when run_dir is not a run
    path, _sidecar = export_paths(run_dir, fmt)
    again = f"`transferkit export {run_dir} --format {fmt}`"
    if not path.is_file():
        raise UserError(f"{run_dir} has no {path.name}; run {again} first")
    module, meta = open_exported(fmt, path)
    if not meta.get("classes") or not meta.get("preprocess"):
        raise UserError(f"{path} has no transferkit metadata (classes, preprocessing); run {again} again")
    weights = Path(run_dir) / "model.safetensors"
    if weights.is_file() and meta.get("weights_sha256") not in (None, sha256_file(weights)):
        raise UserError(f"{path} was exported from other weights than {weights.name}; run {again} again")
    return module, Preprocess.from_json(meta["preprocess"]), list(meta["classes"])


def load_backend(run_dir: str | Path, backend: str = "torch"):
    """``(module, Preprocess, classes, run)`` for the chosen backend, ready for inference."""
    from transferkit.rundir import load_run, read_run

    if backend == "torch":
        from transferkit.export import Logits

        tm, pre, classes, run = load_run(run_dir)
        return Logits(tm.net).eval(), pre, classes, run
    module, pre, classes = load_exported(run_dir, backend)
    return module, pre, classes, read_run(run_dir)
