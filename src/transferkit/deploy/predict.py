"""``transferkit predict``: top-k labels with calibrated probabilities for image files and folders."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from transferkit.core.errors import UserError
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage, is_image_file, load_uint8
from transferkit.data.transforms import prepare
from transferkit.data.tta import tta_views
from transferkit.deploy.backends import Predictor
from transferkit.models.outputs import split_outputs
from transferkit.runs.calibration import average_probabilities, probabilities


def top_predictions(probs: torch.Tensor, classes: list[str], k: int, ranking: torch.Tensor | None = None) -> list[dict]:
    """The ``k`` most likely classes of one probability row, best first: ``{"label", "index", "prob"}``.
    ``ranking`` (the row's logits) orders them exactly where the temperature rounded two probabilities alike."""
    indices = (probs if ranking is None else ranking).topk(min(k, len(classes))).indices.tolist()
    return [{"label": classes[i], "index": i, "prob": round(float(probs[i]), 6)} for i in indices]


def image_probabilities(module, raw: torch.Tensor, pre, device, temperature: float = 1.0, views=None):
    """``(probabilities, ranking)`` of a uint8 batch: through the temperature, averaged over the
    test-time views when there are several (then the average also ranks)."""
    views = views or tta_views(())
    logits = [split_outputs(module(prepare(view(raw), pre, device)))[0].float().cpu() for view in views]
    if len(logits) == 1:
        return probabilities(logits[0], temperature), logits[0]
    probs = average_probabilities(logits, temperature)
    return probs, probs


def collect_images(inputs: list[str]) -> list[str]:
    """Files as given; folders walked recursively (hidden entries skipped), sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                paths += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"image or folder not found: {item}")
    if not paths:
        raise UserError(f"no images found in {', '.join(inputs)}")
    return paths


def sample_images(paths: list[str], pre, count: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The first ``count`` readable images of ``paths``, preprocessed: what an engine is checked on."""
    arrays = []
    for path in paths:
        if len(arrays) >= count:
            break
        try:
            arrays.append(load_uint8(path, pre.size, pre.interpolation, max_pixels))
        except BadImage:
            continue  # reported with the predictions
    return prepare(torch.from_numpy(np.stack(arrays)), pre) if arrays else torch.zeros(0, 3, pre.size, pre.size)


@torch.inference_mode()
def predict_images(predictor: Predictor, paths: list[str], topk: int = 5, batch_size: int = 32,
                   device: str | torch.device = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS, progress=None,
                   tta: tuple = ()) -> list[dict]:
    """One entry per path: ``{"path", "predictions": [{"label", "index", "prob"}]}`` or ``{"path", "error"}``;
    ``tta``: the test-time views to average (see data/tta.py)."""
    net, pre, classes = predictor.module.eval(), predictor.pre, predictor.classes
    views = tta_views(tuple(tta))
    k = min(topk, len(classes))
    results = []
    bar = progress(total=len(paths), desc="predicting", unit="img") if progress and len(paths) > batch_size else None
    for start in range(0, len(paths), batch_size):
        chunk, arrays, entries = paths[start:start + batch_size], [], []
        for path in chunk:
            try:
                arrays.append(load_uint8(path, pre.size, pre.interpolation, max_pixels))
                entries.append({"path": path})
            except BadImage as bad:
                results.append({"path": path, "error": bad.reason})
        if arrays:
            probs, ranking = image_probabilities(net, torch.from_numpy(np.stack(arrays)), pre, device,
                                                 predictor.temperature, views)
            for entry, row, order in zip(entries, probs, ranking):
                entry["predictions"] = top_predictions(row, classes, k, order)
                results.append(entry)
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])


def format_predictions(results: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "index", "prob", "error"])
        for r in results:
            for rank, p in enumerate(r.get("predictions", []), 1):
                writer.writerow([r["path"], rank, p["label"], p["index"], p["prob"], ""])
            if "error" in r:
                writer.writerow([r["path"], "", "", "", "", r["error"]])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        lines.append(r["path"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
        for p in r.get("predictions", []):
            lines.append(f"  {p['prob']:7.2%}  {p['label']}")
    return "\n".join(lines)


def is_run_dir(path: str) -> bool:
    return (Path(path) / "run.json").is_file()
