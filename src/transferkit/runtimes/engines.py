"""The engines a frozen network runs on: PyTorch, onnxruntime and OpenVINO behind one call.

Each engine is an ``nn.Module`` that takes a preprocessed ``(N, 3, S, S)`` float32 batch and
returns a float32 CPU tensor, so the feature cache, ``eval``, ``predict``, ``embed`` and the
server's batcher use any of them as they used the PyTorch network. Every engine gets its own
thread count: ``torch.set_num_threads`` does not bind onnxruntime's or OpenVINO's pools.
"""
from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.core.devices import uses_convolutions

NAMES = ("torch", "onnxruntime", "openvino")


def all_cores() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def installed(name: str) -> bool:
    import importlib.util

    module = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}[name]
    return importlib.util.find_spec(module) is not None


def _numpy(x: torch.Tensor) -> np.ndarray:
    # Both runtimes want contiguous float32 (onnxruntime refuses float64; OpenVINO converts silently).
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


class Engine(nn.Module):
    """Base: ``name`` (torch | onnxruntime | openvino) and ``precision`` (fp32 | bf16 | int8);
    ``files``: the converted files it runs (none for torch), which name its numbers in cache keys."""

    name = "engine"
    files: tuple = ()

    def __init__(self, precision: str = "fp32", threads: int = 0):
        super().__init__()
        self.precision, self.threads = precision, threads

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"


class TorchEngine(Engine):
    """The network itself, channels-last for convolutions; bf16 (and, on a GPU, fp16) through autocast."""

    name = "torch"

    def __init__(self, module: nn.Module, precision: str = "fp32", threads: int = 0, channels_last: bool | None = None):
        super().__init__(precision, threads)
        self.channels_last = uses_convolutions(module) if channels_last is None else channels_last
        self.module = module.eval()
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if threads:
            torch.set_num_threads(threads)  # torch has one pool per process: the last setting wins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.module.parameters(), torch.empty(0)).device
        x = x.to(device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(device.type, dtype) if dtype else nullcontext():
            out = self.module(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float()


class OnnxRuntimeEngine(Engine):
    """An onnxruntime CPU session: all graph optimisations, sequential execution, no spinning."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int = 0):
        super().__init__(precision, threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or all_cores()
        options.inter_op_num_threads = 1
        # Idle worker threads otherwise spin after each run and take the CPU from the next
        # batch's decoding and resizing in PyTorch; measured free of cost.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.files = (Path(path),)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: _numpy(x)})[0])


class OpenVinoEngine(Engine):
    """An OpenVINO CPU model, compiled with an explicit precision hint.

    ``mode="batch"`` (feature cache, eval, embed): the THROUGHPUT hint, a batch split over
    parallel infer requests. ``mode="latency"`` (serve, small predict jobs): one request, the
    LATENCY hint. The precision hint is always set: on CPUs with bf16 instructions OpenVINO
    otherwise runs fp32 models in bf16 (logits off by ~1).
    """

    name = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantized ops; the rest stays f32

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int = 0, mode: str = "batch",
                 cache_dir: str | Path | None = None):
        super().__init__(precision, threads)
        import openvino as ov

        core = ov.Core()
        if cache_dir:  # compiled blobs: the second compile of the same file is ~10x quicker
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[precision], "INFERENCE_NUM_THREADS": threads or all_cores(),
                  "PERFORMANCE_HINT": "THROUGHPUT" if mode == "batch" else "LATENCY"}
        self.compiled = core.compile_model(str(path), "CPU", config)
        weights = Path(path).with_suffix(".bin")  # an IR's .xml comes with its .bin; an .onnx is one file
        self.files = (Path(path), *((weights,) if Path(path).suffix == ".xml" and weights.is_file() else ()))
        self.mode, self.lock = mode, threading.Lock()
        if mode == "batch":
            self.queue = ov.AsyncInferQueue(self.compiled, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        else:
            self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = _numpy(x)
        with self.lock:  # infer requests and the queue's callback are not for two threads at once
            if self.mode != "batch" or len(array) < 2:
                request = self.request if self.mode != "batch" else self.compiled.create_infer_request()
                # .copy(): the output is a view of a buffer that the next inference overwrites
                return torch.from_numpy(request.infer({0: array})[0].copy())
            parts = np.array_split(array, min(len(self.queue), len(array)))
            outputs: list = [None] * len(parts)
            self.queue.set_callback(lambda request, i: outputs.__setitem__(i, request.get_output_tensor(0).data.copy()))
            for i, part in enumerate(parts):
                self.queue.start_async({0: part}, userdata=i)
            self.queue.wait_all()
        return torch.from_numpy(np.concatenate(outputs))
