"""``transferkit export``: the run's model as ONNX, TorchScript or OpenVINO IR, checked against PyTorch.

The exported model takes a batch of *preprocessed* images, ``(N, 3, S, S)`` float32 with any
N, and returns raw logits. Preprocessing (size, mean, std, interpolation), the class names and the
run's calibration temperature (probabilities = softmax(logits / T)) travel inside the file (ONNX
``metadata_props``, TorchScript extra files, OpenVINO ``rt_info``) and in a sidecar JSON beside it,
so a consumer in another language knows what to feed it and how to read what comes out.

An export is only kept if it agrees with PyTorch: in fp32 it is run on a handful of real images
from the run's data (random inputs when the data is gone) and the largest logit difference must
stay within ``TOLERANCE`` x max(1, largest |logit|); in bf16/int8 (``--precision``) the accuracy
guard judges it on the run's validation split. The check happens on temporary files, so a bad
export never replaces anything.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from transferkit.core.errors import UserError
from transferkit.core.safeio import sha256_file, write_json_atomic
from transferkit.models.outputs import Logits
from transferkit.runs.calibration import run_temperature
from transferkit.runs.inference import run_guard, sample_inputs
from transferkit.runs.rundir import load_run
from transferkit.runtimes import reduced
from transferkit.runtimes.convert import export_onnx
from transferkit.runtimes.exported import META_KEY, export_paths, open_exported
from transferkit.runtimes.guard import judge
from transferkit.runtimes.reduced import quantize_onnxruntime, quantize_openvino

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


def _write_onnx(module: nn.Module, example: torch.Tensor, path: str, opset: int, meta: dict, pre) -> None:
    export_onnx(module, pre.size, path, INPUT_NAME, OUTPUT_NAME, opset, example)
    _add_onnx_metadata(path, meta)


def _add_onnx_metadata(path: str | Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    entries = {META_KEY: json.dumps(meta), "classes": json.dumps(meta["classes"]),
               "preprocess": json.dumps(meta["preprocess"]), "temperature": repr(meta["calibration"]["temperature"])}
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "transferkit"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_openvino(module: nn.Module, example: torch.Tensor, path: str, meta: dict, pre, calibration=None) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``) through ONNX; int8 when ``calibration`` images are given."""
    import openvino as ov

    onnx_file = Path(path).with_suffix(".onnx")
    export_onnx(module, pre.size, onnx_file, INPUT_NAME, OUTPUT_NAME, DEFAULT_OPSET, example)
    if calibration is not None:
        quantize_openvino(onnx_file, calibration, Path(path))
        model = ov.Core().read_model(str(path))
    else:
        model = ov.Core().read_model(str(onnx_file))
    onnx_file.unlink()
    model.set_rt_info(json.dumps(meta), [META_KEY])
    # compress_to_fp16=False: the default stores weights in fp16 (logits off by ~0.1)
    ov.save_model(model, str(path), compress_to_fp16=False)


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
               tolerance: float = TOLERANCE, precision: str = "fp32") -> dict:
    """Write ``RUN_DIR/model.<fmt>`` and its sidecar; returns what was written and checked.

    fp32 is checked against PyTorch on real images: largest logit difference at most
    ``tolerance`` x max(1, largest |logit|). bf16 (OpenVINO) and int8 (ONNX, OpenVINO) are checked
    by the accuracy guard on the run's validation split (runtimes/guard.py) instead.
    """
    path, sidecar = export_paths(run_dir, fmt)
    _check_request(fmt, opset, precision)
    tm, pre, classes, run = _load_for_export(run_dir)
    module = Logits(tm.net).eval()
    x, source = sample_inputs(run, pre, samples)
    with torch.inference_mode():
        expected = module(x)
    meta = metadata(run, pre, classes, sha256_file(Path(run_dir) / "model.safetensors"))
    meta["precision"] = precision
    guard = run_guard(run, pre, classes) if precision != "fp32" else None
    calibration = guard.calibration().numpy() if precision == "int8" else None
    # Trace with a batch of 2 and check with the whole sample: a batch size baked in by mistake shows.
    example = x[:2].clone()
    work = Path(run_dir) / f".export-{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        tmp = work / path.name
        try:
            if fmt == "onnx":
                _write_onnx(module, example, str(tmp), opset, meta, pre)
                if calibration is not None:
                    quantized = work / "int8.onnx"
                    quantize_onnxruntime(tmp, calibration, quantized)
                    _add_onnx_metadata(quantized, meta)
                    os.replace(quantized, tmp)
            elif fmt == "openvino-ir":
                _write_openvino(module, example, str(tmp), meta, pre, calibration)
            else:
                _write_torchscript(module, example, str(tmp), meta)
        except UserError:
            raise
        except Exception as exc:  # an architecture the exporter cannot follow: say which, and what to try
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            other = "a newer --opset or --format torchscript" if fmt == "onnx" else "--format onnx"
            raise UserError(f"cannot export {run['model']['name']} as {fmt} ({type(exc).__name__}: {first}); "
                            f"try {other}") from None
        parity = _check(fmt, tmp, x, expected, source, tolerance, module, guard, precision)
        companions = [p for p in work.iterdir() if p.name != tmp.name]  # the IR's .bin
        for file in [*companions, tmp]:  # the model file last: it is what readers open first
            os.replace(file, Path(run_dir) / file.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = dict(meta, file=path.name, export_format=fmt, opset=opset if fmt == "onnx" else None,
                parity=parity, versions=_versions(fmt))
    write_json_atomic(sidecar, info)
    return {"path": path, "sidecar": sidecar, "max_abs_diff": parity.get("max_abs_diff"), "inputs": source,
            "bytes": sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()),
            "guard": parity.get("guard"), "precision": precision}


def _check(fmt, tmp: Path, x, expected, source: str, tolerance: float, module, guard, precision: str) -> dict:
    """The written file against PyTorch: within the fp32 bound, or through the accuracy guard."""
    if guard is None:
        got = run_exported(fmt, tmp, x)
        diff = float((got.float() - expected.float()).abs().max())
        bound = tolerance * max(1.0, float(expected.abs().max()))
        if not diff <= bound:  # also catches NaN
            raise UserError(f"the {fmt} export disagrees with PyTorch: largest logit difference "
                            f"{diff:.3g} > {bound:.3g} on {source}; nothing was written")
        return {"max_abs_diff": diff, "tolerance": bound, "inputs": source}
    verdict = judge(module, open_exported(fmt, tmp)[0], guard)
    if not verdict["ok"]:
        raise UserError(f"--precision {precision} refused: {verdict['text']}; nothing was written")
    return {"guard": verdict["text"], "agreement": verdict["agreement"], "accuracy": verdict["accuracy"],
            "accuracy_fp32": verdict["accuracy_fp32"], "inputs": "the run's validation split"}


def _check_request(fmt: str, opset: int, precision: str) -> None:
    if fmt == "onnx":
        _require("onnx", "onnxruntime")
        if not 11 <= opset <= 21:
            raise UserError(f"--opset {opset}: the exporter writes opsets 11 to 21; {DEFAULT_OPSET} suits most runtimes")
    if fmt == "openvino-ir":
        _require("onnx", "openvino")
    if precision == "bf16" and fmt != "openvino-ir":
        raise UserError("--precision bf16 is an OpenVINO precision hint stored with the file: use --format openvino-ir")
    if precision == "int8" and fmt == "torchscript":
        raise UserError("--precision int8 is written as --format onnx (onnxruntime's quantizer) or openvino-ir (NNCF)")
    if precision == "int8" and fmt == "openvino-ir" and "openvino" not in reduced.int8_engines():
        raise UserError("--format openvino-ir --precision int8 needs NNCF: pip install 'transferkit[int8]'")


def _versions(fmt: str) -> dict:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    if fmt == "openvino-ir":
        import openvino

        versions.update(openvino=openvino.__version__)
    return versions


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this export needs {' and '.join(missing)}; install them with "
                        "`pip install 'transferkit[export]'`")
