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
from safetensors import safe_open

from transferkit.core.errors import UserError
from transferkit.core.safeio import load_torch_file, save_safetensors_atomic, torch_save_atomic


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


def best_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "best.safetensors"


def save_best(run_dir: Path, model_state: dict, epoch: int) -> None:
    """The best epoch's weights, marked with that epoch (see ``repair_best``)."""
    if finite_weights(model_state):
        save_safetensors_atomic(model_state, best_path(run_dir), metadata={"epoch": str(epoch)})


def best_epoch_on_disk(run_dir: Path) -> int | None:
    path = best_path(run_dir)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        epoch = (f.metadata() or {}).get("epoch")
    return int(epoch) if epoch and epoch.isdigit() else None


def repair_best(run_dir: Path, state: dict) -> None:
    """Make ``best.safetensors`` agree with the checkpoint a resume continues from.

    An epoch that improves writes ``last.pt`` (which records the new best) and then
    ``best.safetensors``. A kill between the two leaves the older best on disk: its weights
    are the checkpoint's own model, so they are written again here. Anything else on disk
    (a best written by an attempt whose checkpoint never landed) is replaced the same way or
    removed, so the run's model never comes from an epoch the checkpoint does not know.
    """
    best, on_disk = state["best"].get("epoch"), best_epoch_on_disk(run_dir)
    unmarked = on_disk is None and best_path(run_dir).is_file()  # written before best files carried their epoch
    if best is None or on_disk == best or unmarked:
        return
    if best == state["state"]["epoch"] and state["state"]["batch"] == 0:
        save_best(run_dir, state["model"], best)
        return
    raise UserError(f"{best_path(run_dir)} does not hold epoch {best}, the best epoch this run's checkpoint "
                    "records; the run cannot be resumed exactly. Start it again without --resume")


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"--resume: {run_dir} has no checkpoint (checkpoints/last.pt); start it without --resume")
    return load_torch_file(path)
