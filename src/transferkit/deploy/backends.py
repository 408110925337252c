"""Which network answers ``predict`` and ``serve``: the run's own PyTorch model, its exported file,
or a pretrained ImageNet model by name. Every backend is an ``nn.Module`` taking preprocessed
``(N, 3, S, S)`` float32 and returning logits, so the callers treat them alike."""
from __future__ import annotations

from pathlib import Path

from transferkit.core.errors import UserError
from transferkit.core.safeio import sha256_file
from transferkit.data.transforms import Preprocess
from transferkit.models.outputs import Logits
from transferkit.models.registry import create_backbone
from transferkit.runs.inference import classifier_engine, engine_settings
from transferkit.runs.rundir import load_run, read_run
from transferkit.runtimes.exported import export_paths, open_exported


def load_exported(run_dir: str | Path, fmt: str):
    """``(module, Preprocess, classes)`` from ``RUN_DIR/model.<fmt>``, checked against the run's weights."""
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


EXPORTED = {"onnx": "onnx", "torchscript": "torchscript", "openvino-ir": "openvino"}  # --backend -> export format


def load_backend(run_dir: str | Path, backend: str = "torch", precision: str = "fp32", threads: int = 0,
                 mode: str = "latency", sample=None, images: int | None = None):
    """``(module, Preprocess, classes, run, message)`` ready for inference on the CPU.

    ``backend``: an engine (auto, torch, onnxruntime, openvino: the run's weights, converted and
    checked by ``runtimes``) or a file ``transferkit export`` wrote (onnx, torchscript, openvino-ir).
    ``sample(pre)``: preprocessed real images for the parity check (default: from the run's data).
    """
    if backend in EXPORTED:
        if precision != "fp32":
            raise UserError("--precision goes with an engine (--backend auto|torch|onnxruntime|openvino); an exported "
                            "file keeps the precision `transferkit export --precision` gave it")
        module, pre, classes = load_exported(run_dir, EXPORTED[backend])
        return module, pre, classes, read_run(run_dir), f"backend {backend}: {export_paths(run_dir, EXPORTED[backend])[0]}"
    tm, pre, classes, run = load_run(run_dir)
    if backend == "torch" and precision == "fp32" and sample is None and images is None:
        return Logits(tm.net).eval(), pre, classes, run, "backend torch"  # nothing to check or time
    settings = engine_settings(backend, precision, threads, mode=mode, images=images)
    x = sample(pre) if sample is not None else None
    choice = classifier_engine(tm, pre, run, classes, settings, x, f"{len(x)} of the images to predict" if x is not None else "")
    return choice.engine, pre, classes, run, choice.message


def load_predictor(run_dir: str | None, model: str | None, weights: str = "imagenet"):
    """``(net, preprocess, classes)`` from a run dir, or a pretrained model by name (``weights``:
    imagenet, a weight name such as IMAGENET1K_V1 or timm/resnet50.a1_in1k, or a file)."""
    if run_dir:
        tm, pre, classes, _ = load_run(run_dir)
        return tm.net, pre, classes
    net, info = create_backbone(model, weights)
    if not info.imagenet_classes:
        raise UserError(f"{model} with --weights {weights} has no class names to predict with; give "
                        "imagenet or a weight name of the model")
    return net.eval(), info.preprocess(), info.imagenet_classes
