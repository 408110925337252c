"""``report.html``: one self-contained page that says how a run went.

Everything is inline (figures and thumbnails as base64 PNG data URIs, CSS in a <style> tag, no
scripts, no fonts, no links out), so the page opens offline, from an e-mail attachment or a
copied run directory, and fetches nothing. Inputs: run.json, metrics.csv, lr_find.json and the
per-image outputs of the scored split (``eval/<split>_outputs.npz``); thumbnails of the worst
errors are read back from the data set, and the page says so when it is not reachable.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from transferkit.core.errors import UserError
from transferkit.core.safeio import write_text_atomic
from transferkit.data.imagecache import load_item
from transferkit.data.images import DEFAULT_MAX_PIXELS, BadImage
from transferkit.data.specs import load_data
from transferkit.runs import plots, shift
from transferkit.runs.calibration import FOLDS, describe
from transferkit.runs.history import read_history
from transferkit.runs.metrics import (
    class_balanced_scores,
    confusion_matrix,
    expected_calibration_error,
    per_class_scores,
    reliability_bins,
)
from transferkit.runs.planview import plan_section
from transferkit.runs.rundir import read_run

WORST = 24       # thumbnails in the gallery of errors
THUMB = 112      # their size in pixels
BINS = 15        # calibration bins, as in run.json's ECE

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1140px;
padding:24px;color:#1d232a;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:32px 0 10px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
.sub{color:#5b6673;margin:0 0 18px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #dde2e8;border-radius:8px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:1.5em}.card span{color:#5b6673;font-size:.85em}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
table{border-collapse:collapse;font-size:.92em}td,th{padding:4px 10px;border-bottom:1px solid #eef1f4;text-align:left}
th{background:#f5f7f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:9px;background:#1f77b4;border-radius:2px;vertical-align:middle;margin-right:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
figure{margin:0;border:1px solid #dde2e8;border-radius:8px;padding:8px;font-size:.85em;overflow-wrap:anywhere}
figure img{width:112px;height:112px;object-fit:contain;image-rendering:pixelated;display:block;margin:0 auto 6px;
background:#f5f7f9}
.true{color:#217a3c}.pred{color:#b3261e}.note{color:#5b6673;font-style:italic}
code{background:#f5f7f9;padding:1px 4px;border-radius:3px;font-size:.9em;overflow-wrap:anywhere}
details{margin-top:10px}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def load_outputs(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        # Outputs written before calibration hold one set of probabilities (temperature 1).
        optional = {key: data[key].astype(np.float32) if key in data.files else None
                    for key in ("probs_uncalibrated", "probs_held_out")}
        return {"probs": data["probs"].astype(np.float32), "labels": data["labels"], "index": data["index"],
                "split": str(data["split"]), "data": str(data["data"]), **optional}


def thumbnail(array: np.ndarray) -> bytes:
    """uint8 (C, H, W) -> PNG, enlarged with hard pixel edges when tiny (8x8 digits, 28x28 Fashion-MNIST)."""
    image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    if max(image.size) < THUMB:
        scale = max(1, THUMB // max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    else:
        image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_thumbnails(data: str, seed: int, split: str, rows: list[int],
                    allow_outside_paths: bool = False) -> tuple[dict, str | None]:
    """``{row: png}`` for rows of a split; the reason as a string when the data cannot be read."""
    try:
        imageset = load_data(data, seed, allow_outside_paths).split(split)
    except (UserError, OSError) as exc:
        return {}, f"the data set '{data}' could not be read here ({exc})"
    out = {}
    if hasattr(imageset, "encoded"):  # parquet rows: decoded together, in one pass over the files
        kept = [r for r in rows if r < len(imageset)]
        wanted = imageset.subset(kept)
        decoded, _ = wanted.decode(THUMB, "bilinear", skip_bad=True)
        pixels = dict(zip(decoded.paths, decoded.images.numpy()))
        return {row: thumbnail(pixels[n]) for row, n in zip(kept, wanted.paths) if n in pixels}, None
    for row in rows:
        if row >= len(imageset):
            continue
        try:
            if getattr(imageset, "batch", None) is not None:
                array = imageset.batch(torch.tensor([row]))[0].numpy()
            else:
                array = load_item(imageset.item(row), THUMB, "bilinear", DEFAULT_MAX_PIXELS)
            out[row] = thumbnail(array)
        except (BadImage, OSError):
            continue  # the card says "image unavailable"
    return out, None


def _summary(outputs: dict, classes: list[str]) -> dict:
    probs, labels = torch.from_numpy(outputs["probs"]), torch.from_numpy(outputs["labels"]).long()
    pred = probs.argmax(1)
    k = min(5, probs.shape[1])
    cm = confusion_matrix(pred, labels, len(classes))
    summary = {"n": len(labels), "top1": float((pred == labels).double().mean()),
               "top5": float((probs.topk(k, 1).indices == labels[:, None]).any(1).double().mean()),
               **class_balanced_scores(cm), "cm": cm.numpy(), "per_class": per_class_scores(cm, classes)}
    # Calibration is judged held out: on the split the temperature was fitted on, the cross-fitted probabilities.
    judged = torch.from_numpy(outputs["probs_held_out"]) if outputs.get("probs_held_out") is not None else probs
    summary.update(bins=reliability_bins(judged, labels, BINS), ece=expected_calibration_error(judged, labels, BINS),
                   cross_fitted=outputs.get("probs_held_out") is not None)
    if outputs.get("probs_uncalibrated") is not None:
        raw = torch.from_numpy(outputs["probs_uncalibrated"])
        summary.update(bins_uncalibrated=reliability_bins(raw, labels, BINS),
                       ece_uncalibrated=expected_calibration_error(raw, labels, BINS))
    return summary


def worst_errors(outputs: dict, limit: int = WORST) -> list[dict]:
    """Wrong predictions, most confident first: the ones a user most needs to look at."""
    probs, labels = outputs["probs"], outputs["labels"]
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:limit]
    return [{"row": int(outputs["index"][i]), "true": int(labels[i]), "pred": int(pred[i]),
             "p_pred": float(probs[i, pred[i]]), "p_true": float(probs[i, labels[i]])} for i in order]


def _cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                                           for k, v in items) + "</div>"


def _per_class_table(per_class: dict) -> str:
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    body = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{s['precision']:.3f}</td><td class=num>{s['recall']:.3f}</td>"
        f"<td class=num><span class=bar style=\"width:{s['f1'] * 80:.0f}px\"></span>{s['f1']:.3f}</td>"
        f"<td class=num>{s['support']}</td></tr>" for name, s in per_class.items())
    return f"<table>{head}{body}</table>"


def _gallery(errors: list[dict], thumbs: dict, classes: list[str]) -> str:
    cards = []
    for err in errors:
        picture = _img(thumbs[err["row"]], f"image {err['row']}", "thumb") if err["row"] in thumbs else \
            '<p class="note">image unavailable</p>'
        cards.append(f"<figure>{picture}<figcaption>true <b class=true>{_e(classes[err['true']])}</b><br>"
                     f"predicted <b class=pred>{_e(classes[err['pred']])}</b> ({err['p_pred']:.2f})<br>"
                     f"p(true) {err['p_true']:.2f} &middot; #{err['row']}</figcaption></figure>")
    return f'<div class="gallery">{"".join(cards)}</div>'


def _recipe(run: dict) -> str:
    recipe = run.get("recipe") or {}
    probe = recipe.get("linear_probe")
    if not probe:
        return run.get("config", {}).get("recipe", "standard")
    return (f"{recipe.get('name')}: linear probe first (val acc {probe['val_acc']:.4f}, {probe['seconds']} s), "
            "then the epochs below fine-tune from it")


def _sampling(cfg: dict) -> str:
    parts = [f"{cfg['shots']} per class" if cfg.get("shots") else (f"limit {cfg['train_limit']}" if cfg.get("train_limit") else "all"),
             f"sampler {cfg.get('sampler', 'shuffle')}", f"class weights {cfg.get('class_weights', 'none')}"]
    return ", ".join(parts)


def _settings(run: dict, lr_find: dict | None) -> str:
    cfg, backbone = run.get("config", {}), run.get("backbone", {})
    lr = f"{lr_find['suggestion']:.3g} (found by lr-find)" if lr_find and cfg.get("lr") == "auto" else cfg.get("lr")
    rows = [
        ("backbone", f"{backbone.get('name')} ({backbone.get('source')})"),
        ("weights", f"{backbone.get('weights')}: {backbone.get('weights_source')}"),
        ("weights sha256", backbone.get("weights_sha256") or "—"),
        ("freeze", f"{run.get('freeze', {}).get('spec')} (frozen stages: {run.get('freeze', {}).get('cut')})"),
        ("head", run.get("model", {}).get("head")),
        ("recipe", _recipe(run)),
        ("training images", _sampling(cfg)),
        ("calibration", describe(run.get("calibration"))),
        ("data", ", ".join(f"{k}: {v}" for k, v in run.get("data", {}).items())),
        ("preprocessing", ", ".join(f"{k} {v}" for k, v in run.get("preprocess", {}).items())),
        ("training", f"{cfg.get('epochs')} epochs, lr {lr}, {cfg.get('optimizer')}, batch {cfg.get('batch_size')}, "
                     f"seed {cfg.get('seed')}"),
        ("feature cache", run.get("feature_cache", "—")),
        ("best epoch", run.get("best_epoch")),
        ("created", run.get("created")),
        ("versions", ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items())),
    ]
    table = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
    full = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in cfg.items())
    return f"<table>{table}</table><details><summary>all settings</summary><table>{full}</table></details>"


def _calibration(run: dict, summary: dict) -> str:
    """Both reliability diagrams: the network's own probabilities and those after the temperature."""
    how = describe(run.get("calibration"))
    how = how[0].upper() + how[1:] + " (a temperature never changes the ranking of the classes, or any prediction)."
    if summary.get("cross_fitted"):
        how += (f" The temperature was fitted on this same split: the calibrated curve and its error give each "
                f"image the probabilities of a temperature fitted on the other {FOLDS - 1}/{FOLDS} of the split "
                "(cross-fitting), never judging it on the images it was fitted on.")
    text = (f"<h2>Calibration</h2><p class=sub>How far the predicted probabilities are from the observed accuracy: "
            f"expected calibration error {summary['ece']:.3f} over {BINS} bins. {_e(how)}</p>")
    curves = [("calibrated", summary["bins"], summary["ece"])]
    if "bins_uncalibrated" in summary:
        curves.insert(0, ("before the temperature", summary["bins_uncalibrated"], summary["ece_uncalibrated"]))
    return text + _img(plots.reliability_png(curves), "reliability diagram")


def _corruptions(run_dir: Path) -> str:
    """The shift test's results (``eval --corrupt``) when it was run: cards and one row per corruption."""
    results = shift.load_results(run_dir)
    if not results:
        return ""
    parts = ['<h2 id="corruptions">Robustness to corruptions</h2>']
    for result in results:
        columns, worst = shift.severity_columns(result), result["worst"] or {}
        families = {row["corruption"]: row["family"] for row in result["rows"]}
        how = ("mean over every corruption and severity; the worst corruption by its mean over severities"
               if len(columns) > 1 else "mean over the corruptions")
        parts.append(f"<p class=sub>{_e(shift.describe(result))}; {how}.</p>")
        parts.append(_cards([("clean top-1", f"{result['clean']['top1']:.2%}"),
                             ("mean corrupted top-1", f"{result['mean_top1']:.2%}"),
                             ("drop", f"{100 * result['drop']:.1f} points"),
                             ("worst corruption", f"{worst.get('corruption')} {worst.get('top1', 0):.2%}")]))
        head = "".join(f"<th>severity {c}</th>" for c in columns) + ("<th>mean</th>" if len(columns) > 1 else "")
        body = "".join(
            f"<tr><td>{_e(name)}</td><td>{_e(families[name])}</td>"
            + "".join(f"<td class=num><span class=bar style=\"width:{accs.get(c, 0) * 80:.0f}px\"></span>"
                      f"{accs[c]:.3f}</td>" if c in accs else "<td></td>" for c in columns)
            + (f"<td class=num>{result['per_corruption'][name]:.3f}</td>" if len(columns) > 1 else "") + "</tr>"
            for name, accs in shift.by_corruption(result).items())
        parts.append(f'<table class="corruptions" style="margin-top:12px"><tr><th>corruption</th><th>family</th>{head}</tr>{body}</table>')
    return "\n".join(parts)


def render(run_dir: str | Path, outputs_file: str | Path | None = None) -> str:
    """The report's HTML for ``run_dir``; per-image outputs from ``outputs_file`` (default: the run's scored split)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    classes = run["classes"]
    split = run.get("metrics", {}).get("split", "test")
    outputs = load_outputs(Path(outputs_file) if outputs_file else run_dir / "eval" / f"{split}_outputs.npz")
    history = read_history(run_dir)
    lr_file = run_dir / "lr_find.json"
    lr_find = json.loads(lr_file.read_text(encoding="utf-8")) if lr_file.is_file() else None
    title = f"{run_dir.resolve().name}: {run['model']['name']} on {run['config'].get('data')}"
    parts = [f"<h1>{_e(title)}</h1>"]
    where = f"{outputs['data']}, {outputs['split']} split" if outputs else "no per-image outputs"
    parts.append(f'<p class="sub">{len(classes)} classes &middot; scored on {_e(where)} &middot; '
                 f"created {_e(run.get('created', '?'))}</p>")

    summary = _summary(outputs, classes) if outputs is not None and len(outputs["labels"]) else None
    if summary:
        parts.append(_cards([("top-1 accuracy", f"{summary['top1']:.2%}"), ("top-5 accuracy", f"{summary['top5']:.2%}"),
                             ("balanced accuracy", f"{summary['balanced_accuracy']:.2%}"),
                             ("macro-F1", f"{summary['macro_f1']:.3f}"),
                             ("calibration error (ECE)", f"{summary['ece']:.3f}"), ("images scored", f"{summary['n']:,}"),
                             ("best epoch", str(run.get("best_epoch")))]))
    parts.append("<h2>Training</h2>")
    if history:
        parts.append(_img(plots.curves_png(history), "loss and accuracy per epoch"))
        parts.append(_img(plots.lr_png(history), "learning rate per epoch"))
    else:
        parts.append('<p class="note">metrics.csv has no epochs yet.</p>')
    if lr_find:
        finding = SimpleNamespace(**{k: lr_find[k] for k in ("lrs", "losses", "raw_losses", "suggestion", "stopped")})
        parts.append(_img(plots.lr_find_png(finding), "learning-rate range test"))

    if summary is None:
        parts.append("<h2>Errors and calibration</h2><p class=note>No per-image outputs for this run; "
                     f"<code>transferkit eval {_e(run_dir)}</code> writes them, then <code>transferkit report "
                     f"{_e(run_dir)}</code>.</p>")
    else:
        parts.append("<h2>Confusion matrix</h2>" + _img(plots.confusion_png(summary["cm"], classes), "confusion matrix"))
        parts.append("<h2>Per-class scores</h2>" + _per_class_table(summary["per_class"]))
        errors = worst_errors(outputs)
        parts.append(f"<h2>Worst errors</h2><p class=sub>The {len(errors)} most confident wrong predictions "
                     f"(of {int((summary['cm'].sum() - np.trace(summary['cm'])))} errors); #N is the image's row in "
                     f"the {_e(outputs['split'])} split.</p>")
        if errors:
            own = outputs["data"] == run["config"]["data"]  # other data: never outside its folder here
            thumbs, problem = load_thumbnails(outputs["data"], run["config"].get("seed", 0), outputs["split"],
                                              [e["row"] for e in errors],
                                              own and run["config"].get("allow_outside_paths", False))
            if problem:
                parts.append(f'<p class="note">Thumbnails left out: {_e(problem)}.</p>')
            parts.append(_gallery(errors, thumbs, classes))
        else:
            parts.append('<p class="note">No errors on this split.</p>')
        parts.append(_calibration(run, summary))
    parts.append(_corruptions(run_dir))
    parts.append(plan_section(run))
    parts.append("<h2>Settings</h2>" + _settings(run, lr_find))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)} · transferkit report</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, outputs_file: str | Path | None = None) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path."""
    target = Path(out) if out else Path(run_dir) / "report.html"
    write_text_atomic(target, render(run_dir, outputs_file))
    return target
