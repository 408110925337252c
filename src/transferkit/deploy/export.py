"""``transferkit export``: the run's model as ONNX or TorchScript, checked against PyTorch.

The exported model takes a batch of *preprocessed* images, ``(N, 3, S, S)`` float32 with any
N, and returns raw logits. Preprocessing (size, mean, std, interpolation), the class names and the
run's calibration temperature (probabilities = softmax(logits / T)) travel inside the file (ONNX
``metadata_props``, TorchScript extra files) and in a sidecar JSON beside it, so a consumer in
another language knows what to feed it and how to read what comes out.

An export is only kept if it agrees with PyTorch: it is run on a handful of real images from
the run's data (random inputs when the data is gone) and the largest absolute logit difference
must stay under ``TOLERANCE``. The check happens on the temporary file, so a bad export never
replaces anything.
"""
from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.safeio import atomic_write, sha256_file, write_json_atomic
from transferkit.data.imagesets import decode_splits
from transferkit.data.specs import load_data
from transferkit.data.transforms import prepare
from transferkit.models.outputs import Logits
from transferkit.runs.calibration import run_temperature
from transferkit.runs.rundir import load_run
from transferkit.runtimes.exported import META_KEY, export_paths, open_exported

DEFAULT_OPSET = 17  # every onnxruntime since 1.13 runs it; LayerNorm is a single op from 17 on
TOLERANCE = 1e-4  # fp32 logits; kernels differ in summation order, never by more than this
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _load_for_export(run_dir):
    try:
        import timm.layers
        # timm swaps layers whose forward the exporters cannot follow (dynamic 'same' padding)
        # for export-friendly ones; the setting only matters while the model is being built.
        exportable = timm.layers.set_layer_config(exportable=True)
    except (ImportError, AttributeError):
        exportable = nullcontext()
    with exportable:
        return load_run(run_dir)


def sample_inputs(run: dict, pre, count: int = 8) -> tuple[torch.Tensor, str]:
    """Preprocessed images for the parity check: real ones from the run's data when it is reachable."""
    try:
        raw, names = _real_images(run, pre, count)
        if len(raw) >= 2:
            return prepare(raw, pre), f"{len(raw)} images of {run['config']['data']} ({'+'.join(names)})"
    except (UserError, KeyError, OSError, ValueError):
        pass  # the data moved or is gone: the check still runs, on random inputs
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (count, 3, pre.size, pre.size), dtype=torch.uint8, generator=generator)
    return prepare(raw, pre), f"{count} random inputs (the run's data was not found)"


def _real_images(run: dict, pre, count: int) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` uint8 images spread over the test split, topped up from val and train."""
    splits = load_data(run["config"]["data"], run["config"].get("seed", 0))
    batches, names, have = [], [], 0
    for name in ("test", "val", "train"):
        images = getattr(splits, name)
        if images is None or len(images) == 0 or have >= count:
            continue
        pick = np.unique(np.linspace(0, len(images) - 1, num=min(count - have, len(images))).round().astype(int))
        # Files: decode only the few we use; a broken one is simply left out of the check.
        raw = decode_splits({name: images.subset(pick.tolist())}, pre.size, pre.interpolation, skip_bad=True,
                           announce=False)[name].images
        if len(raw):
            batches.append(raw if raw.shape[1] == 3 else raw.expand(-1, 3, -1, -1))
            names.append(name)
            have += len(raw)
    return (torch.cat(batches) if batches else torch.zeros(0)), names


def metadata(run: dict, pre, classes: list[str], weights_sha256: str) -> dict:
    return {
        "format": 1,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, pre.size, pre.size], "dtype": "float32",
                  "layout": "NCHW, RGB, normalised: (pixel/255 - mean) / std"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classes)],
                   "meaning": "logits; softmax(logits / calibration.temperature) gives calibrated probabilities"},
        "classes": list(classes),
        "calibration": {"temperature": run_temperature(run)},
        "preprocess": pre.to_json(),
        "model": run["model"],
        "backbone": run.get("backbone", {}).get("name", run["model"]["name"]),
        "weights_sha256": weights_sha256,  # of model.safetensors: tells a stale export apart
    }


def _write_onnx(module: nn.Module, example: torch.Tensor, path: str, opset: int, meta: dict) -> None:
    import io

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        # dynamo=False: the torch.export-based exporter (the default since torch 2.9) needs the
        # onnxscript package and still rejects some timm/torchvision graphs; the TorchScript-based
        # exporter handles every backbone we ship, and the parity check below guards the result.
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    entries = {META_KEY: json.dumps(meta), "classes": json.dumps(meta["classes"]),
               "preprocess": json.dumps(meta["preprocess"]), "temperature": repr(meta["calibration"]["temperature"])}
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "transferkit"
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: str, meta: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Tracing, not scripting: it records the forward of any architecture (user code included);
        # nothing in a classifier's eval-mode forward branches on the data.
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, path, _extra_files={META_KEY: json.dumps(meta)})


def run_exported(fmt: str, path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file on ``x`` (used by the parity check)."""
    module, _meta = open_exported(fmt, path)
    with torch.inference_mode():
        return module(x)


def export_run(run_dir: str | Path, fmt: str, opset: int = DEFAULT_OPSET, samples: int = 8,
               tolerance: float = TOLERANCE) -> dict:
    """Write ``RUN_DIR/model.<fmt>`` and its sidecar; returns what was written and checked."""
    path, sidecar = export_paths(run_dir, fmt)
    if fmt == "onnx":
        _require("onnx", "onnxruntime")
        if not 11 <= opset <= 21:
            raise UserError(f"--opset {opset}: the exporter writes opsets 11 to 21; {DEFAULT_OPSET} suits most runtimes")
    tm, pre, classes, run = _load_for_export(run_dir)
    module = Logits(tm.net).eval()
    x, source = sample_inputs(run, pre, samples)
    with torch.inference_mode():
        expected = module(x)
    meta = metadata(run, pre, classes, sha256_file(Path(run_dir) / "model.safetensors"))
    # Trace with a batch of 2 and check with the whole sample: a batch size baked in by mistake shows.
    example = x[:2].clone()
    check = {}

    def write(tmp: str) -> None:
        try:
            if fmt == "onnx":
                _write_onnx(module, example, tmp, opset, meta)
            else:
                _write_torchscript(module, example, tmp, meta)
        except Exception as exc:  # an architecture the exporter cannot follow: say which, and what to try
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            other = "a newer --opset or --format torchscript" if fmt == "onnx" else "--format onnx"
            raise UserError(f"cannot export {run['model']['name']} as {fmt} ({type(exc).__name__}: {first}); "
                            f"try {other}") from None
        got = run_exported(fmt, tmp, x)
        check["diff"] = float((got.float() - expected.float()).abs().max())
        if not check["diff"] <= tolerance:  # also catches NaN
            raise UserError(f"the {fmt} export disagrees with PyTorch: largest logit difference "
                            f"{check['diff']:.3g} > {tolerance:g} on {source}; nothing was written")

    atomic_write(path, write)
    info = dict(meta, file=path.name, export_format=fmt, opset=opset if fmt == "onnx" else None,
                parity={"max_abs_diff": check["diff"], "tolerance": tolerance, "inputs": source},
                versions=_versions(fmt))
    write_json_atomic(sidecar, info)
    return {"path": path, "sidecar": sidecar, "max_abs_diff": check["diff"], "inputs": source,
            "bytes": path.stat().st_size}


def _versions(fmt: str) -> dict:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}; install them with "
                        "`pip install 'transferkit[export]'`")
