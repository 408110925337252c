"""Reduced precision: where bf16 runs, and int8 by static quantization calibrated on the user's images.

bf16 needs no new file: OpenVINO takes it as a precision hint, PyTorch as CPU autocast. int8
rewrites the network: NNCF (OpenVINO's quantizer) with the settings that kept EfficientNet-Lite0
closest to fp32 on real photos (mixed preset, full bias correction, first convolution and the
matrix products of the classifier left in fp32, no overflow fix), or onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, min-max calibration) where
NNCF is not installed. Either way the result is only used if the accuracy guard passes.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import logging
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch

RECIPE = 1  # bump when the quantization settings change: the cached int8 files are then remade


def bf16_support() -> dict:
    """Which engines run bf16 on this CPU with its own instructions (avx512_bf16, AMX)."""
    has = {"openvino": False, "torch": False}
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        has["openvino"] = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    try:
        has["torch"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    return has


def int8_engines() -> list[str]:
    """The installed int8 engines: openvino when NNCF (and OpenVINO) are installed, onnxruntime when it is."""
    engines = []
    if importlib.util.find_spec("nncf") is not None and importlib.util.find_spec("openvino") is not None:
        engines.append("openvino")
    if importlib.util.find_spec("onnxruntime") is not None:
        engines.append("onnxruntime")
    return engines


def calibration_key(images: np.ndarray) -> str:
    """Quantized files depend on the calibration images: a hash of them is part of the file name."""
    versions = [str(RECIPE), *(_version(m) for m in ("nncf", "openvino", "onnxruntime"))]
    digest = hashlib.sha256("|".join(versions).encode())
    digest.update(np.ascontiguousarray(images, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__ if importlib.util.find_spec(module) else "-"
    except Exception:  # noqa: BLE001 - a broken optional package only changes the key
        return "?"



@contextmanager
def _quiet():
    """NNCF logs each ignored node and draws a progress bar on stdout (which carries --format json
    output): both are dropped; its warnings and errors still reach stderr."""
    loggers = [logging.getLogger(name) for name in ("nncf", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize_openvino(onnx_path: Path, images: np.ndarray, out_xml: Path) -> None:
    """NNCF post-training quantization of the ONNX file, saved as OpenVINO IR (``.xml`` + ``.bin``)."""
    with _quiet():
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.Core().read_model(str(onnx_path))
    ops = model.get_ordered_ops()
    first_conv = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"][:1]
    matmuls = [op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"]
    data = nncf.Dataset([images[i:i + 1] for i in range(len(images))])
    with _quiet():
        quantized = nncf.quantize(model, data, subset_size=len(images), preset=nncf.QuantizationPreset.MIXED,
                                  fast_bias_correction=False,
                                  ignored_scope=nncf.IgnoredScope(names=first_conv + matmuls, validate=False),
                                  advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE))
    # compress_to_fp16=False: the default halves the remaining fp32 weights on disk (logits off by ~0.1).
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)


def quantize_onnxruntime(onnx_path: Path, images: np.ndarray, out_path: Path) -> None:
    """onnxruntime static quantization (QDQ) of the ONNX file, calibrated on ``images``."""
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):
        def __init__(self, name: str):
            self.name, self.start = name, 0

        def get_next(self):
            if self.start >= len(images):
                return None
            batch = np.ascontiguousarray(images[self.start:self.start + 8], np.float32)
            self.start += 8
            return {self.name: batch}

    import onnx

    name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    prepared = out_path.with_name(out_path.name + ".pre.onnx")
    oq.shape_inference.quant_pre_process(str(onnx_path), str(prepared))
    try:
        # MinMax calibration: percentile/entropy keep every activation histogram (tens of GB at 224 px).
        oq.quantize_static(str(prepared), str(out_path), Reader(name), quant_format=oq.QuantFormat.QDQ,
                           per_channel=True, activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
