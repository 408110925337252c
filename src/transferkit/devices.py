"""Device choice, and the largest batch that fits a GPU (``--batch-size auto``)."""
from __future__ import annotations

import torch

from transferkit.errors import UserError

CPU_BATCH = 64


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: this machine has no CUDA GPU that torch can use; try --device cpu")
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got '{spec}'")


def uses_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def auto_batch_size(module, sample_shape: tuple, device: torch.device, autocast, limit: int, dtype=torch.float32) -> int:
    """Double the batch until a forward+backward runs out of memory; keep 3/4 of the last that fit."""
    if device.type != "cuda":
        return min(CPU_BATCH, limit)
    best, size = 0, 8
    while size <= min(limit, 4096):
        try:
            x = torch.randn((size, *sample_shape), device=device, dtype=dtype)
            with autocast():
                out = module(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().sum().backward()
            best = size
            size *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            module.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    if best == 0:
        raise UserError("even a batch of 8 does not fit in GPU memory; use --image-size smaller or --freeze backbone")
    return max(8, best * 3 // 4) if best < min(limit, 4096) else best
