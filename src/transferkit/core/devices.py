"""Device choice, and the largest batch that fits a GPU (``--batch-size auto``)."""
from __future__ import annotations

import torch

from transferkit.core.errors import UserError


def cuda_available() -> bool:
    """Whether torch can use a CUDA GPU: the one question behind ``--device auto`` (tests fake it here)."""
    return torch.cuda.is_available()


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if spec.startswith("cuda"):
        if not cuda_available():
            raise UserError(f"--device {spec}: this machine has no CUDA GPU that torch can use; try --device cpu")
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got '{spec}'")


def uses_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
