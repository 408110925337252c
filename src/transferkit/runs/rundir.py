"""The run directory: run.json + model.safetensors are all that predict/eval/export/serve need."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from transferkit import __version__
from transferkit.core.errors import UserError
from transferkit.core.lazy import version_of
from transferkit.core.safeio import load_weights_file, write_json_atomic
from transferkit.data.transforms import Preprocess
from transferkit.models.families.custom import registered
from transferkit.models.family import BackboneInfo
from transferkit.models.plugins import unknown_in_run
from transferkit.models.transfer import rebuild_model
from transferkit.models.usercode import activate_run_code
from transferkit.models.weights import load_exactly
from transferkit.runs.localpaths import LOCAL_FILE, split_local, with_local


def versions() -> dict:
    return {"transferkit": __version__, "torch": torch.__version__, "torchvision": version_of("torchvision"),
            "timm": version_of("timm"), "python": platform.python_version()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def read_run(run_dir: str | Path, local: bool = True) -> dict:
    """run.json, with this machine's paths from local.json laid over it (``local=False``: as published)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a transferkit run directory (no run.json); "
                        "give the --out folder of a finished `transferkit train`")
    run = _read_json(path)
    overlay = Path(run_dir) / LOCAL_FILE
    return with_local(run, _read_json(overlay)) if local and overlay.is_file() else run


def write_run(run_dir: str | Path, record: dict) -> dict:
    """run.json without this machine's paths, local.json with them (runs/localpaths.py); the shared record."""
    shared, local = split_local(record)
    write_json_atomic(Path(run_dir) / LOCAL_FILE, local)
    write_json_atomic(Path(run_dir) / "run.json", shared)
    return shared


def load_run(run_dir: str | Path, weights_file: str = "model.safetensors"):
    """``(TransferModel, Preprocess, classes, run)`` rebuilt from the run dir alone (no download)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    weights = run_dir / weights_file
    if not weights.is_file():
        raise UserError(f"{run_dir} has no {weights_file}: the run did not finish; resume it with "
                        f"`transferkit train --out {run_dir} --resume`")
    activate_run_code(run_dir, run)  # runs the user code stored in the run: trusted runs only
    model_name, classes = run["model"]["name"], run["classes"]
    if run["backbone"].get("source") == "registered" and registered(model_name) is None:
        raise unknown_in_run(model_name)
    tm = rebuild_model(BackboneInfo.from_json(run["backbone"]), len(classes), run["model"]["head"])
    load_exactly(tm.net, load_weights_file(weights), f"{weights} does not fit {model_name} with {len(classes)} classes")
    tm.net.eval()
    return tm, Preprocess.from_json(run["preprocess"]), classes, run
