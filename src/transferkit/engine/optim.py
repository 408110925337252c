"""Optimizers, the learning-rate schedule and mixed precision: fine-tuning's usual choices."""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with a gradient scaler); never on the CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


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
