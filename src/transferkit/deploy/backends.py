"""Which network answers ``predict`` and ``serve``: the run's own model on a CPU engine, its
exported file, or a pretrained ImageNet model by name. Every backend is an ``nn.Module``-like
callable taking preprocessed ``(N, 3, S, S)`` float32 and returning logits, so the callers treat
them alike; the temperature that turns those logits into calibrated probabilities comes with it
(run.json, or the exported file's metadata)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.safeio import sha256_file
from transferkit.data.transforms import Preprocess
from transferkit.models.outputs import Logits
from transferkit.models.registry import create_backbone
from transferkit.runs.calibration import run_temperature
from transferkit.runs.inference import classifier_engine, engine_settings
from transferkit.runs.rundir import load_run, read_run
from transferkit.runtimes.exported import FORMATS, export_paths, open_exported


@dataclass
class Predictor:
    module: nn.Module          # preprocessed (N, 3, S, S) float32 -> logits, in eval mode
    pre: Preprocess
    classes: list
    run: dict = field(default_factory=dict)  # run.json; empty for a pretrained ImageNet model
    temperature: float = 1.0   # probabilities = softmax(logits / temperature)
    message: str = ""          # which engine answers, and how it was checked (for the log)


EXPORTED = tuple(FORMATS)  # --backend NAME runs the file `export --format NAME` wrote


def load_exported(run_dir: str | Path, fmt: str) -> Predictor:
    """``RUN_DIR/model.<fmt>``, checked against the run's weights, with the temperature its metadata carries."""
    run = read_run(run_dir)  # a clear error when run_dir is not a run
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
    # Exports written before calibration existed carry no temperature: the run's own applies.
    temperature = run_temperature(meta) if meta.get("calibration") else run_temperature(run)
    return Predictor(module, Preprocess.from_json(meta["preprocess"]), list(meta["classes"]), run, temperature,
                     f"backend {fmt}: {path}")


def load_backend(run_dir: str | Path, backend: str = "torch", precision: str = "fp32", threads: int = 0,
                 mode: str = "latency", sample=None, images: int | None = None) -> Predictor:
    """The run's model ready for inference on the CPU.

    ``backend``: an engine (auto, torch, onnxruntime, openvino: the run's weights, converted and
    checked by ``runtimes``) or a file ``transferkit export`` wrote (onnx, torchscript, openvino-ir).
    ``sample(pre)``: preprocessed real images for the parity check (default: from the run's data).
    """
    if backend in EXPORTED:
        if precision != "fp32":
            raise UserError("--precision goes with an engine (--backend auto|torch|onnxruntime|openvino); an exported "
                            "file keeps the precision `transferkit export --precision` gave it")
        return load_exported(run_dir, backend)
    tm, pre, classes, run = load_run(run_dir)
    if backend == "torch" and precision == "fp32" and sample is None and images is None:
        # nothing to check or time
        return Predictor(Logits(tm.net).eval(), pre, classes, run, run_temperature(run), "backend torch")
    settings = engine_settings(backend, precision, threads, run["config"].get("cache_dir"), mode=mode, images=images)
    x = sample(pre) if sample is not None else None
    choice = classifier_engine(tm, pre, run, classes, settings, x, f"{len(x)} of the images to predict" if x is not None else "")
    return Predictor(choice.engine, pre, classes, run, run_temperature(run), choice.message)


def load_pretrained(model: str, weights: str = "imagenet") -> Predictor:
    """A pretrained backbone with its own head and class names (``predict --model NAME``; ``weights``:
    imagenet, a weight name such as IMAGENET1K_V1 or timm/resnet50.a1_in1k, or a file)."""
    net, info = create_backbone(model, weights)
    if not info.imagenet_classes:
        raise UserError(f"{model} with --weights {weights} has no class names to predict with; give "
                        "imagenet or a weight name of the model")
    return Predictor(Logits(net).eval(), info.preprocess(), info.imagenet_classes)
