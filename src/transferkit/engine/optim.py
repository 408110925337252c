"""Optimizers, the learning-rate schedule and mixed precision: fine-tuning's usual choices."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from transferkit.core.errors import UserError


def device_precision(device: torch.device, precision: str) -> str:
    """What ``--precision`` means on ``device``, never ``auto``: on a CUDA GPU fp32, or bf16|fp16
    autocast (auto: bf16 where the GPU has it, else fp16); on the CPU the precision of the
    engines (runtimes/): fp32|bf16|int8 (auto: fp32). What cannot run there is a UserError."""
    if device.type == "cuda":
        if precision == "int8":
            raise UserError("--precision int8 is a CPU engine's (onnxruntime, OpenVINO), not a GPU's: use --precision "
                            "bf16, fp16 or fp32 on the GPU, or --device cpu (with --device auto int8 runs on the CPU)")
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise UserError("--precision fp16 is autocast on a CUDA GPU; on the CPU use bf16 or int8 (the engines) or fp32")
    return "fp32" if precision == "auto" else precision


def amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision ``device_precision`` gave: bf16 or fp16 (with a gradient
    scaler) on a CUDA GPU; None (no autocast) otherwise, and always on the CPU."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast_for(dtype: torch.dtype | None):
    return nullcontext if dtype is None else (lambda: torch.autocast("cuda", dtype=dtype))


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up to 1, then cosine to 0 (fine-tuning's usual schedule)."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_optimizer(name: str, groups, lr: float):
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)
