"""Training state for an exact resume, in files that load with ``torch.load(weights_only=True)``.

``checkpoints/last.pt`` holds model, optimizer, scheduler, AMP scaler, step counters, RNG
states and the metric history; ``checkpoints/best.safetensors`` the weights of the best
epoch so far. Both are written atomically: a kill at any moment leaves the previous file.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import UserError
from transferkit.safeio import load_torch_file, save_safetensors_atomic, torch_save_atomic


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def finite_weights(state_dict: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def save_checkpoint(run_dir: Path, payload: dict) -> None:
    if not finite_weights(payload["model"]):
        raise RuntimeError("refusing to checkpoint non-finite weights")
    torch_save_atomic(payload, run_dir / "checkpoints" / "last.pt")


def save_best(run_dir: Path, model_state: dict) -> None:
    if finite_weights(model_state):
        save_safetensors_atomic(model_state, run_dir / "checkpoints" / "best.safetensors")


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"--resume: {run_dir} has no checkpoint (checkpoints/last.pt); start it without --resume")
    return load_torch_file(path)
