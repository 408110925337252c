"""A run directory opens without transferkit: timm, transformers and torchvision load it, in a
fresh process that cannot import transferkit, from the model card's own snippets, and predict
what ``transferkit predict`` predicts (top-1 always, probabilities within 1e-4, logits within 1e-5).

The runs carry a calibration temperature far from 1 (set in run.json as a fitted one, then the card
and config.json rewritten by ``transferkit report``): the probabilities compared are the ones the
card's snippets compute themselves, so a snippet that forgot T would fail here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_image_folder, own_cache
from PIL import Image
from safetensors import safe_open
from sklearn.datasets import load_sample_images

from transferkit.cli import main
from transferkit.data.images import load_uint8
from transferkit.data.transforms import prepare
from transferkit.runs.rundir import load_run

HERE = Path(__file__).resolve().parent
RUNS = {  # --model -> --weights (no network: random init, or the packaged ImageNet weights)
    "resnet18": "none",
    "timm/resnet18": "none",
    "efficientnet_lite0": "imagenet",
}
LOADERS = {"resnet18": {"timm", "PyTorch and torchvision", "transformers"},
           "timm/resnet18": {"timm", "PyTorch", "transformers"},
           "efficientnet_lite0": {"timm", "PyTorch", "transformers"}}


def real_photos(folder: Path) -> list[str]:
    """scikit-learn's two sample photos, whole and cut to awkward shapes, as JPEG and PNG files."""
    folder.mkdir(parents=True)
    paths = []
    for i, array in enumerate(load_sample_images().images):
        photo = Image.fromarray(array)
        for name, picture in ((f"photo{i}.jpg", photo), (f"wide{i}.jpg", photo.crop((37, 11, 338, 210))),
                              (f"tall{i}.png", photo.resize((123, 411)))):
            picture.save(folder / name)
            paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def interop(tmp_path_factory):
    """Three tiny runs, what transferkit predicts for real photos, and what the outside process loads."""
    root = tmp_path_factory.mktemp("interop")
    data = make_image_folder(root / "images", classes=("cat", "dog", "fox"), per_class=5, size=40)
    photos = real_photos(root / "photos")
    runs, ours = {}, {}
    with own_cache(root / "cache"):
        for model, weights in RUNS.items():
            out = root / model.replace("/", "_")
            assert main(["train", "--data", str(data), "--model", model, "--weights", weights, "--image-size", "32",
                         "--epochs", "1", "--batch-size", "4", "--quiet", "--out", str(out)]) == 0
            calibrated(out, TEMPERATURE)
            runs[model] = str(out)
            ours[model] = transferkit_outputs(out, photos)
    job = root / "job.json"
    job.write_text(json.dumps({"runs": list(runs.values()), "images": photos}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, str(HERE / "outside_loader.py"), str(job)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return runs, ours, json.loads(done.stdout.strip().splitlines()[-1]), photos


TEMPERATURE = 2.5  # 3 validation images fit none; a value this far from 1 shows whether a snippet applies it


def calibrated(run_dir: Path, temperature: float) -> None:
    """The run as if a temperature had been fitted on its validation split; card and config.json rewritten."""
    record = json.loads((run_dir / "run.json").read_text())
    record["calibration"].update(status="fitted", temperature=temperature, split="val")
    (run_dir / "run.json").write_text(json.dumps(record))
    assert main(["report", str(run_dir)]) == 0


def transferkit_outputs(run_dir: Path, photos: list[str]) -> dict:
    """Logits from the loaded run, and the probabilities `transferkit predict` prints."""
    tm, pre, classes, run = load_run(run_dir)
    x = prepare(torch.from_numpy(np.stack([load_uint8(p, pre.size, pre.interpolation) for p in photos])), pre)
    with torch.no_grad():
        logits = tm.net.eval()(x)
    return {"logits": logits, "classes": classes, "run": run, "predict": predict_json(run_dir, photos, len(classes))}


def predict_json(run_dir: Path, photos: list[str], k: int) -> list[list[float]]:
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        assert main(["predict", str(run_dir), *photos, "--format", "json", "--topk", str(k), "--quiet"]) == 0
    probs = []
    for entry in json.loads(buffer.getvalue()):
        row = [0.0] * k
        for p in entry["predictions"]:
            row[p["index"]] = p["prob"]
        probs.append(row)
    return probs


@pytest.mark.parametrize("model", list(RUNS))
def test_other_libraries_load_the_run_and_agree(interop, model):
    runs, ours, outside, photos = interop
    mine, theirs = ours[model], outside[runs[model]]
    assert not outside["transferkit_imported"]
    assert set(theirs["blocks"]) == LOADERS[model], theirs["blocks"]
    assert mine["run"]["calibration"]["temperature"] == TEMPERATURE
    expected = torch.tensor(mine["predict"])  # what `transferkit predict` prints, through T
    for loader in LOADERS[model] - {"transformers"}:
        logits = torch.tensor(theirs[loader]["logits"])
        assert (logits - mine["logits"]).abs().max() <= 1e-5, loader  # same input pixels, same maths
        probs = torch.tensor(theirs[loader]["probs"])  # what the card's snippet computed, with its own T
        assert torch.equal(probs.argmax(1), expected.argmax(1)), loader
        assert (probs - expected).abs().max() <= 1e-4, loader
        assert (logits.softmax(-1) - expected).abs().max() > 1e-3, loader  # T matters on these images
    hf = theirs["transformers"]  # the pipeline's scores are softmax(logits): the card says to divide by T first
    assert (torch.tensor(hf["logits"]) - mine["logits"]).abs().max() <= 1e-5
    assert hf["id2label"] == mine["classes"]
    assert hf["pipeline_top1"] == [mine["classes"][i] for i in expected.argmax(1).tolist()]


@pytest.mark.parametrize("model", list(RUNS))
def test_the_folder_has_the_hub_files(interop, model):
    runs, ours, _, _ = interop
    run_dir, run = Path(runs[model]), ours[model]["run"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["label_names"] == run["classes"] and config["num_classes"] == len(run["classes"])
    assert config["pretrained_cfg"]["crop_pct"] == 1.0 and "model_args" not in config
    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["classes"]) == run["classes"]
    assert json.loads(meta["preprocess"])["size"] == 32 and meta["transferkit_version"] and meta["architecture"]
    card = (run_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "timm" and front["pipeline_tag"] == "image-classification"
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == round(run["metrics"]["top1"], 4)
    assert "upload_folder" in card and "## Limitations" in card
