"""``README.md``: the model card of a run, in the Hugging Face Hub's format.

YAML front matter (library, tags, datasets, metrics, pipeline tag, base model, scores as a
model-index), then what a person deciding whether to use the model needs: its scores, its
classes, how it was trained, how to load it with transferkit, timm, transformers and plain
PyTorch (only the ways checked to fit its weights), and what it cannot do.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from transferkit.models.fewshot import is_fewshot
from transferkit.models.usercode import HUB_PREFIX, RUN_PREFIX, TRUST_FLAG, is_user_spec, names_code
from transferkit.runs.calibration import FOLDS, describe

# Built-in data sets and their repositories on the Hub (digits ships with scikit-learn only).
HUB_DATASETS = {"fashion-mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10"}
MAX_LISTED = 100  # classes listed in full up to this many; the rest are in config.json and run.json


def _data_name(spec: str) -> str:
    return HUB_DATASETS.get(spec) or Path(spec.split(":image=")[0].split(":label=")[0].rstrip("/")).name or spec


def front_matter(run: dict, name: str, found) -> dict:
    metrics, spec = run.get("metrics", {}), run["config"]["data"]
    tags = ["image-classification", "transferkit", *(["timm"] if found.timm else []),
            *(["torchvision"] if found.torchvision else []), "pytorch", "safetensors"]
    data = {}
    if found.timm:
        data["library_name"] = "timm"  # the Hub's "use this model" snippets are timm's
    data["tags"] = tags
    if spec in HUB_DATASETS:
        data["datasets"] = [HUB_DATASETS[spec]]
    data["metrics"] = ["accuracy"]
    data["pipeline_tag"] = "image-classification"
    if found.base_model:
        data["base_model"] = found.base_model
    if "top1" in metrics:
        results = [{"type": "accuracy", "value": round(float(metrics["top1"]), 4), "name": "Top-1 accuracy"}]
        if "top5" in metrics:
            results.append({"type": "top_5_accuracy", "value": round(float(metrics["top5"]), 4), "name": "Top-5 accuracy"})
        data["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image classification"},
            "dataset": {"name": _data_name(spec), "type": HUB_DATASETS.get(spec, _data_name(spec)),
                        "split": metrics.get("split", "test")},
            "metrics": results}]}]
    return data


def _scores(run: dict, per_class: dict | None) -> list[str]:
    m = run.get("metrics", {})
    lines = ["## Scores", "",
             f"On the **{m.get('split', '?')}** split of `{run['config']['data']}` ({m.get('n', '?')} images), "
             f"with the weights of epoch {run.get('best_epoch')} (best validation accuracy):", "",
             "| top-1 accuracy | top-5 accuracy | loss | calibration error (ECE) |", "|---|---|---|---|",
             f"| {m.get('top1', 0):.4f} | {m.get('top5', 0):.4f} | {m.get('loss', 0):.4f} | {m.get('ece', 0):.4f} |", ""]
    if (run.get("calibration") or {}).get("scored") == "cross-fitted":
        lines += [f"The temperature was fitted on this same split, so the calibration error is cross-fitted: each "
                  f"image's probabilities come from a temperature fitted on the other {FOLDS - 1}/{FOLDS} of the split, "
                  "never from one fitted on the image itself.", ""]
    if per_class and len(per_class) <= MAX_LISTED:
        lines += ["| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
                  for c, s in per_class.items()]
        lines.append("")
    return lines


def _classes(classes: list[str], untrained: list[str], head: str) -> list[str]:
    shown = ", ".join(f"{i}: `{c}`" for i, c in enumerate(classes[:MAX_LISTED]))
    more = f", ... ({len(classes) - MAX_LISTED} more: `label_names` in config.json)" if len(classes) > MAX_LISTED else ""
    lines = ["## Classes", "", f"{len(classes)} classes, by output index: {shown}{more}.", ""]
    if untrained:
        fate = "are never predicted" if is_fewshot(head) else "were never learnt"
        lines += [f"{len(untrained)} of them had no training images and {fate}: "
                  f"{', '.join(f'`{c}`' for c in untrained[:MAX_LISTED])}.", ""]
    return lines


def _training(run: dict, t: float | None) -> list[str]:
    cfg, bb, pre = run["config"], run["backbone"], run["preprocess"]
    data = ", ".join(f"{k} {v}" for k, v in run.get("data", {}).items() if k != "spec")
    said = describe(run.get("calibration"))
    calibration = said[0].upper() + said[1:] + (" (the top class is the same either way)." if t is not None else ".")
    return ["## How it was trained", "",
            f"- Backbone: `{run['model']['name']}` ({bb.get('source')}), starting weights `{bb.get('weights')}` "
            f"from {bb.get('weights_source')} (sha256 `{bb.get('weights_sha256') or '-'}`).",
            f"- Head: `{run['model']['head']}`; frozen: `{run.get('freeze', {}).get('spec')}`.",
            f"- Data: `{cfg['data']}` ({data} images).",
            f"- {cfg.get('epochs')} epoch(s), lr {run.get('lr', cfg.get('lr'))} ({cfg.get('optimizer')}, warm-up then cosine), "
            f"batch {cfg.get('batch_size')}, label smoothing {cfg.get('label_smoothing')}, augmentation "
            f"`{cfg.get('augment')}`, seed {cfg.get('seed')}.",
            f"- Input: RGB, short side resized to {pre['size']} px ({pre['interpolation']}), centre crop "
            f"{pre['size']}x{pre['size']}, values scaled to [0, 1] then normalised with mean {list(pre['mean'])} "
            f"and std {list(pre['std'])}.",
            f"- {calibration}",
            f"- Made with transferkit {run.get('versions', {}).get('transferkit', '?')} "
            f"(torch {run.get('versions', {}).get('torch', '?')}); every setting is in `run.json`.", ""]


def _torch_transform(pre: dict) -> str:
    mode = "BICUBIC" if pre["interpolation"] == "bicubic" else "BILINEAR"
    return (f"transform = T.Compose([T.Resize({pre['size']}, interpolation=T.InterpolationMode.{mode}), "
            f"T.CenterCrop({pre['size']}),\n                       T.ToTensor(), T.Normalize({list(pre['mean'])}, "
            f"{list(pre['std'])})])")


def _code(run: dict) -> tuple[bool, list[str]]:
    """Whether loading the run runs code of its own, and which (as the card names it)."""
    model = run["model"]
    specs = [model["name"], model["head"], model.get("plugin")]
    shown = [str(spec).removeprefix(RUN_PREFIX).rpartition(":")[0] or str(spec).removeprefix(RUN_PREFIX)
             for spec in specs[:2] if is_user_spec(spec)]
    shown += [model["plugin"].removeprefix(RUN_PREFIX)] if model.get("plugin") else []
    shown += [model["name"]] if str(model["name"]).startswith(HUB_PREFIX) else []
    return names_code(*specs), shown


def _trust(run: dict) -> list[str]:
    runs_code, shown = _code(run)
    if not runs_code:
        return ["This run holds no code of its own: transferkit loads it without running anything from this folder. "
                f"(A run folder that does name code, such as `code/*.py`, is refused unless you pass `{TRUST_FLAG}`, "
                "`trust_code=True` in Python, after reading that code.)", ""]
    return [f"Loading this run runs Python code it names: {', '.join(f'`{c}`' for c in shown)}. transferkit runs a "
            f"run folder's code only when you pass `{TRUST_FLAG}` (`trust_code=True` in Python): read it before you "
            "do, as you would any code you download.", ""]


def _usage(run: dict, found, t: float | None) -> list[str]:
    n, pre = len(run["classes"]), run["preprocess"]
    logits = f"(model(x) / {t!r})" if t is not None else "model(x)"
    runs_code = _code(run)[0]
    flag, kwarg = (f" {TRUST_FLAG}", ", trust_code=True") if runs_code else ("", "")
    lines = ["## How to use it", "", "`RUN_DIR` is this folder; once it is uploaded to the Hub as `user/name` (see Files), "
             "timm and transformers also take `hf-hub:user/name` and `user/name`.", "", "**transferkit**", "", "```bash",
             f"transferkit predict RUN_DIR photo.jpg --topk 3{flag}", f"transferkit serve RUN_DIR{flag}", "```", "",
             "```python", "import transferkit as tk", f'tk.predict("RUN_DIR", ["photo.jpg"], topk=3{kwarg})', "```", "",
             *_trust(run)]
    if found.timm:
        lines += ["**timm**", "", "```python", "import timm, torch", "from PIL import Image", "",
                  'model = timm.create_model("local-dir:RUN_DIR", pretrained=True).eval()',
                  "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
                  'x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)',
                  "with torch.no_grad():", f"    probs = {logits}.softmax(-1)",
                  'print(model.pretrained_cfg["label_names"][probs.argmax().item()])', "```", "",
                  "**transformers** (its timm wrapper; the pipeline reads the preprocessing from config.json)", "",
                  "```python", "from transformers import pipeline", "",
                  'classify = pipeline("image-classification", model="RUN_DIR")', 'classify("photo.jpg")', "```", ""]
        if t is not None:
            lines += [f"The pipeline's scores are `softmax(logits)`; divide the logits by T = {t!r} first "
                      "(`AutoModelForImageClassification`) for the calibrated probabilities.", ""]
    if found.torchvision or found.timm:
        if found.torchvision:
            name, kwargs = found.torchvision
            args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
            title, imports = "**PyTorch and torchvision**", "import torch, torchvision"
            build = f'model = torchvision.models.get_model("{name}", num_classes={n}{args})'
        else:
            title, imports = "**PyTorch** (timm builds the architecture)", "import timm, torch"
            build = f'model = timm.create_model("{found.timm}", num_classes={n})'
        lines += [title, "", "```python", imports, "from PIL import Image",
                  "from safetensors.torch import load_file", "from torchvision import transforms as T", "",
                  build, 'model.load_state_dict(load_file("RUN_DIR/model.safetensors"))', "model.eval()",
                  _torch_transform(pre), 'x = transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0)',
                  "with torch.no_grad():", f"    probs = {logits}.softmax(-1)", "```", ""]
        if found.torchvision and "aux_logits" in found.torchvision[1]:
            lines += ["The auxiliary classifiers were trained too and are in the weights, hence `aux_logits=True`; "
                      f"`transform_input={bool(found.torchvision[1].get('transform_input', False))}` as in training "
                      "(True with pretrained weights, which expect their inputs converted so).", ""]
    if not (found.timm or found.torchvision):
        lines += [f"The model (`{run['model']['name']}`, head `{run['model']['head']}`) is transferkit's own "
                  "arrangement: load it with transferkit as above; `model.safetensors` holds its state dict.", ""]
    return lines


def _limitations(run: dict, t: float | None) -> list[str]:
    n, m = len(run["classes"]), run.get("metrics", {})
    return ["## Limitations", "",
            f"- It knows these {n} classes only: every image gets one of them, including images of none "
            "(there is no \"unknown\" output).",
            f"- The scores above come from the {m.get('split', 'test')} split of the same data set. Photos from "
            "other cameras, places, lighting or populations than those it was trained on can score much lower; "
            "measure on your own data (`transferkit eval RUN_DIR --data YOUR_DATA`) before relying on it.",
            f"- Inputs are expected as described above (RGB, {run['preprocess']['size']} px after the resize and crop); "
            "other preprocessing changes the outputs.",
            "- Licence: set `license:` in this card before sharing it; it follows from the licences of the "
            "starting weights and of the training data.", ""]


# What the rest of a run folder would publish: left out of the upload set unless added on purpose.
PRIVATE = ("`report.html` (thumbnails of your images: the worst errors among them), `eval/` (per-image probabilities "
           "and labels of your data, and where it lives), `local.json` (this machine's paths: the data, run and cache "
           "folders), `metrics.csv` and `confusion_matrix.json` (scores per epoch and per class), `checkpoints/` "
           "(the training state, to resume; large)")


def upload_set(run: dict) -> list[str]:
    """The files the card's upload publishes: what loading the model needs, nothing of the user's data or machine."""
    model = run["model"]
    stored = any(str(spec).startswith(RUN_PREFIX) for spec in (model["name"], model["head"], model.get("plugin")))
    return ["model.safetensors", "config.json", "README.md", "run.json", *(["code/*.py"] if stored else [])]


def _files(run: dict, found) -> list[str]:
    code = "code/*.py" in upload_set(run)
    patterns = ", ".join(f'"{p}"' for p in upload_set(run))
    return ["## Files", "",
            "`model.safetensors` (weights; its metadata names the architecture, classes, preprocessing and "
            "temperature), " + ("`config.json` (timm's format), " if found.timm else "") +
            "`run.json` (every setting, the classes, the scores; no path of the machine it was trained on), " +
            ("`code/` (the code it runs, see above), " if code else "") + "and this card. To publish the model, "
            "upload those and nothing else:", "",
            "```python", "from huggingface_hub import HfApi", "", "api = HfApi()",
            'api.create_repo("user/name", exist_ok=True)',
            f'api.upload_folder(repo_id="user/name", folder_path="RUN_DIR", allow_patterns=[{patterns}])', "```", "",
            f"The rest of the folder stays on this machine unless you add it to `allow_patterns` on purpose: {PRIVATE}.", ""]


def model_card(run: dict, name: str, found, t: float | None, per_class: dict | None) -> str:
    """The README.md text of a run; ``found``: the libraries checked to load its weights (hubfolder.Loaders)."""
    head = yaml.safe_dump(front_matter(run, name, found), sort_keys=False, allow_unicode=True)
    intro = (f"`{run['model']['name']}` fine-tuned with transferkit to "
             f"tell {len(run['classes'])} classes apart, trained on `{run['config']['data']}`.")
    files = _files(run, found)
    untrained = run.get("classes_without_training_images") or []
    body = [f"# {name}", "", intro, "", *_scores(run, per_class), *_classes(run["classes"], untrained, run["model"]["head"]),
            *_training(run, t), *_usage(run, found, t), *_limitations(run, t), *files]
    return f"---\n{head}---\n\n" + "\n".join(body)
