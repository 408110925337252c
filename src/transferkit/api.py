"""The Python API: ``transferkit train/eval/predict`` for notebooks, plain Python objects out.

    import transferkit as tk
    result = tk.fit("digits", model="examples/custom_layers.py:MyCustomModel", weights="none",
                    freeze="none", image_size=8, epochs=5, out="runs/digits")
    tk.evaluate(result["run_dir"])["top1"]
    tk.predict(result["run_dir"], ["photo.png"], topk=3)

``fit`` takes the train flags as keyword arguments (``image_size=8`` for ``--image-size 8``).
Its data is a SPEC string or a ``torch.utils.data.Dataset`` of ``(image, label)`` items; the
images are PIL images or tensors (uint8, or floats in [0, 1] without Normalize). Mistakes raise
``transferkit.errors.UserError`` with the same message the CLI prints. Loading a run trained on
users' code (their model, head or plugin file, a torch.hub model) runs that code, so it is refused
unless the call says ``trust_code=True`` (``--trust-code`` on the command line): read the code of a
run you did not make first.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from transferkit.core.config import RENAMED, TrainConfig
from transferkit.core.deprecated import rename_settings
from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.data.readers.pyobjects import dataset_splits, evaluation_splits, fit_size, stack, to_uint8_chw
from transferkit.data.specs import load_data
from transferkit.data.tta import parse_tta, tta_views
from transferkit.deploy.backends import load_backend
from transferkit.deploy.predict import collect_images, image_probabilities, predict_images, top_predictions
from transferkit.models.transfer import create_model as _create
from transferkit.models.usercode import trusting_code
from transferkit.plan.budget import parse_duration, plan_and_train
from transferkit.plan.rank import candidates_for, offline_models
from transferkit.plan.rank import rank as _rank
from transferkit.runs.evaluate import evaluate_run
from transferkit.runs.rundir import read_run
from transferkit.train.trainer import train


def create_model(name: str, num_classes: int, weights: str = "imagenet", head: str = "linear"):
    """``name``'s backbone with a new ``head`` for ``num_classes`` classes; ``.net`` is the nn.Module,
    ``.info`` its preprocessing (input size, mean, std) and weights source."""
    return _create(name, num_classes, weights, head)


def _config(data_spec: str, model: str, settings: dict):
    known = {f.name for f in fields(TrainConfig)} - {"data", "model"}
    settings = rename_settings(settings, RENAMED, "fit()")
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(f"fit() got unknown settings {unknown}; settings are the train flags with underscores: "
                        f"{', '.join(sorted(known))}")
    # YAML and Python users write numbers: the config keeps lr and batch_size as strings ('auto').
    values = {k: (str(v) if k in ("lr", "batch_size") and not isinstance(v, str) else v) for k, v in settings.items()}
    cfg = TrainConfig(data=data_spec, model=model, **values).validate()
    cfg.given = frozenset(values) | {"data"}  # what a resume compares with the run's own settings
    return cfg


def fit(data, model: str = "efficientnet_lite0", *, val=None, test=None, budget: str | float | None = None,
        models=None, sizes=None, robust: float = 0.0, trust_code: bool = False, **settings) -> dict:
    """Train like ``transferkit train``; returns ``{"run_dir", "metrics", "split", "best_epoch", "cached"}``.

    ``data``: a data SPEC (folder, CSV, ``digits`` ...) or a Dataset; with a Dataset, ``val`` and
    ``test`` may be Datasets too (without ``val``, 20% of each class is held out by ``seed``).
    Class names come from ``dataset.classes`` when it has them, else the labels. ``trust_code``:
    with ``resume=True``, run the code the run names (its copy of a model, head or plugin file).

    ``budget="10m"`` (or seconds) is ``train --budget``: the recipe is chosen for you among ``models``
    (default: those with weights here) and ``sizes`` and the result has the ``"plan"`` too;
    ``robust`` weighs accuracy under corruptions into that choice.
    """
    with trusting_code(trust_code):
        if isinstance(data, (str, Path)):
            if val is not None or test is not None:
                raise UserError("val= and test= go with a Dataset; a data SPEC brings its own splits")
            splits = None
            cfg = _config(str(data), model, settings)
        else:
            splits = dataset_splits(data, val, test, seed=int(settings.get("seed", 0)))
            cfg = _config(splits.spec, model, settings)
        if budget is None:
            return train(cfg, splits=splits)
        seconds = parse_duration(budget) if isinstance(budget, str) else float(budget)
        models = list(models) if models else ([model] if "model" in settings or model != "efficientnet_lite0" else None)
        return plan_and_train(cfg, seconds, models, list(sizes) if sizes else None, splits=splits, robust=robust)


def rank(data, models=None, sizes=(96, 160, 224), *, sample: int = 2000, budget: str | float | None = None,
         robust: float = 0.0, **settings) -> list[dict]:
    """``transferkit rank``: candidates (backbone x input size) scored on a sample of ``data``, best first,
    as dicts (model, size, head, expected, heads, logme, engine_rate, ...). ``settings``: train flags
    such as ``seed``, ``cache_dir``, ``backend``."""
    cfg = _config(str(data), "efficientnet_lite0", settings)
    limit = None if budget is None else (parse_duration(budget) if isinstance(budget, str) else float(budget))
    result = _rank(cfg, load_data(cfg.data, cfg.seed), candidates_for(list(models or offline_models()), list(sizes)),
                   sample=sample, time_limit=limit, robust=robust)
    return [row.to_json() for row in result.rows]


def evaluate(run_dir: str | Path, data=None, split: str = "test", *, device: str = "auto", tta: str | None = None,
             trust_code: bool = False) -> dict:
    """Scores of a run (top1, top5, balanced_accuracy, macro_f1, loss, nll, n, per_class, confusion_matrix,
    ece, ece_uncalibrated, temperature) on ``split`` of its own data, of another data SPEC, or of a
    Dataset (scored whole); ``tta="flip"`` (or ``crops``, ``flip,crops``) averages test-time views;
    ``trust_code``: run the code the run names (see the module's notes)."""
    if data is None and read_run(run_dir)["config"]["data"].startswith("python:"):
        raise UserError(f"{run_dir} was trained on a Python Dataset; pass it (or another) as evaluate(..., data=...)")
    with trusting_code(trust_code):
        if data is None or isinstance(data, (str, Path)):
            return evaluate_run(str(run_dir), str(data) if data is not None else None, split, device, tta=tta)
        return evaluate_run(str(run_dir), None, split, device, splits=evaluation_splits(data, split), tta=tta)


def predict(run_dir: str | Path, images, topk: int = 5, *, device: str = "auto", tta: str | None = None,
            trust_code: bool = False) -> list[dict]:
    """Top-``topk`` ``{"label", "index", "prob"}`` per image, best first; probabilities through the run's
    temperature, averaged over test-time views with ``tta="flip"`` (or ``crops``, ``flip,crops``).

    ``images``: a path or folder, or a list of paths, folders, PIL images and tensors. Each entry
    of the result has ``"path"`` (files) or ``"image"`` (its position in ``images``), and
    ``"predictions"`` (or ``"error"`` for an unreadable file). ``trust_code``: run the code the run
    names (see the module's notes).
    """
    if topk < 1:
        raise UserError("topk must be at least 1")
    items = [images] if isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)) else list(images)
    views = parse_tta(tta)
    with trusting_code(trust_code):
        predictor = load_backend(run_dir, "torch")
    dev = pick_device(device)
    predictor.module.to(dev)
    pre, classes = predictor.pre, predictor.classes
    results = []
    for position, item in enumerate(items):
        if isinstance(item, (str, Path)):
            results += predict_images(predictor, collect_images([str(item)]), topk, device=dev, tta=views)
            continue
        where = f"images[{position}]"
        raw = stack([fit_size(to_uint8_chw(item, where), pre.size, pre.interpolation, where)])
        with torch.inference_mode():
            probs, ranking = image_probabilities(predictor.module, raw, pre, dev, predictor.temperature, tta_views(views))
        results.append({"image": position, "predictions": top_predictions(probs[0], classes, topk, ranking[0])})
    return results
