"""Temperature scaling: fitted on val, stored in run.json, applied wherever probabilities leave the
program (eval, predict, the API, serve, exports), never changing a prediction."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra, own_cache

import transferkit as tk
from transferkit.cli import main
from transferkit.deploy.serve import Service
from transferkit.runs.calibration import fit_temperature, probabilities, run_temperature
from transferkit.runs.evaluate import evaluate_run
from transferkit.runs.metrics import score
from transferkit.runs.rundir import load_run


def test_fit_recovers_the_temperature_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    n, k = 4000, 10
    y = torch.randint(0, k, (n,), generator=g)
    base = torch.randn(n, k, generator=g, dtype=torch.float64)
    base[torch.arange(n), y] += 2.0
    logits = base * 3.0  # the calibrated logits are 2 * base, so the right temperature is 1.5
    t = fit_temperature(logits[:2000], y[:2000])
    assert t == pytest.approx(1.5, abs=0.08)
    before = score(logits[2000:], y[2000:], list("abcdefghij"))
    after = score(logits[2000:], y[2000:], list("abcdefghij"), t)
    assert after["ece"] < 0.03 < before["ece"] and after["ece_uncalibrated"] == before["ece"]
    assert after["top1"] == before["top1"] and after["confusion_matrix"] == before["confusion_matrix"]
    assert after["nll"] < before["nll"] and after["loss"] == before["loss"]  # loss: the raw logits' own


def test_tiny_or_separable_validation_cannot_set_an_extreme_temperature():
    logits = torch.tensor([[5.0, -5.0], [-4.0, 4.0], [6.0, 0.0]])
    t = fit_temperature(logits, torch.tensor([0, 1, 0]))  # all right: the NLL alone would drive T to 0
    assert 0.05 <= t < 1.0
    assert fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0])) == 1.0


def test_a_run_without_a_temperature_means_one():
    assert run_temperature({}) == 1.0 and run_temperature({"calibration": {"temperature": 0.5}}) == 0.5
    assert run_temperature({"calibration": {"temperature": None}}) == 1.0


def digits_folder(root: Path, n: int = 600) -> Path:
    """scikit-learn's digits as a folder of 8x8 PNGs: no test split, and 20% of n held out as val."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:n], digits.target[:n])):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15.9).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """digits (142 validation images: enough for a temperature), with and without calibration, a
    folder whose 6 validation images are too few to fit one on, and a folder of digits with no test
    split (its 120 validation images are both where T is fitted and what the run is scored on)."""
    root = tmp_path_factory.mktemp("calibrated")
    with own_cache(root / "cache"):
        images = make_image_folder(root / "images", classes=("cat", "dog", "owl"), per_class=10)
        args = [*TINY_TRAIN, "--epochs", "2", "--batch-size", "32"]
        digits = ["--data", "digits", "--train-limit", "300"]
        assert main(["train", *digits, "--out", str(root / "run"), *args]) == 0
        assert main(["train", *digits, "--out", str(root / "plain"), *args, "--no-calibrate"]) == 0
        assert main(["train", "--data", str(images), "--out", str(root / "small"), *args]) == 0
        folder = digits_folder(root / "digits")
        assert main(["train", "--data", str(folder), "--out", str(root / "notest"), *args]) == 0
    return root


def test_the_card_and_report_say_what_happened_to_the_probabilities(calibrated):
    """Fitted (T, split, images), off by --no-calibrate, or skipped for want of validation images: the
    model card, the report and the Hub files say which, and only a fitted T reaches the snippets."""
    import yaml

    from transferkit.runs.hubfolder import weights_metadata

    said = {}
    for name in ("run", "plain", "small"):
        run = json.loads((calibrated / name / "run.json").read_text())
        card = (calibrated / name / "README.md").read_text()
        yaml.safe_load(card.split("---\n")[1])  # the front matter still parses
        training = card.split("## How it was trained")[1].split("##")[0]
        said[name] = (run, training.lower(), (calibrated / name / "report.html").read_text().lower())
    run, card, page = said["run"]
    t = run["calibration"]["temperature"]
    n = run["data"]["val"]
    assert run["calibration"]["status"] == "fitted" and run["calibration"]["n"] == n >= 100
    assert f"t = {t:.4g}, fitted on the val split ({n} images)" in card and f"t = {t:.4g}, fitted on the val" in page
    assert weights_metadata(run)["temperature"] == repr(t) and f"/ {t!r})" in (calibrated / "run" / "README.md").read_text()
    run, card, page = said["plain"]
    assert run["calibration"]["status"] == "off"
    for text in (card, page):
        assert "not calibrated (--no-calibrate)" in text and "t = 1" not in text and "fitted on" not in text
    assert "temperature" not in weights_metadata(run) and "model(x) / " not in (calibrated / "plain" / "README.md").read_text()
    run, card, page = said["small"]
    assert run["calibration"]["status"] == "skipped" and run["calibration"]["n"] == 6
    for text in (card, page):
        assert "the validation split has 6 images, fewer than the 100 a temperature is fitted on" in text
        assert "t = 1" not in text


def test_with_no_test_split_calibration_is_scored_on_images_t_never_saw(calibrated):
    """The run is scored on val, where T was fitted: ECE and NLL come from cross-fitted probabilities
    (each image through a temperature fitted on the other folds), in run.json, the per-image outputs,
    the card, the report and a later `eval`; top-1 stays that of the stored T."""
    from transferkit.runs.calibration import FOLDS, cross_fitted_log_probabilities, fit_temperature, log_probabilities
    from transferkit.runs.metrics import expected_calibration_error

    run_dir = calibrated / "notest"
    run = json.loads((run_dir / "run.json").read_text())
    cal, metrics = run["calibration"], run["metrics"]
    assert metrics["split"] == "val" and cal["status"] == "fitted" and cal["n"] == 120 and cal["scored"] == "cross-fitted"
    outputs = np.load(run_dir / "eval" / "val_outputs.npz")
    labels = torch.from_numpy(outputs["labels"])
    stored, held = (torch.from_numpy(outputs[k].astype(np.float64)) for k in ("probs", "probs_held_out"))
    assert torch.equal(stored.argmax(1), held.argmax(1)) and not torch.allclose(stored, held, atol=1e-3)
    assert metrics["ece"] == pytest.approx(expected_calibration_error(held, labels), abs=2e-3)
    assert metrics["ece"] != pytest.approx(expected_calibration_error(stored, labels), abs=1e-6)  # not in-sample
    # a later eval of the same split says the same, and the held-out figure is what cross-fitting gives
    again = evaluate_run(str(run_dir), split="val")
    assert again["calibration_scored"] == "cross-fitted" and again["top1"] == metrics["top1"]
    # (train scored the cached fp16 features, eval the images: the logits differ in the 4th decimal)
    assert again["ece"] == pytest.approx(metrics["ece"], abs=1e-3) and again["nll"] == pytest.approx(metrics["nll"], abs=1e-3)
    assert "cross-fitted" in (run_dir / "README.md").read_text() and "cross-fitting" in (run_dir / "report.html").read_text()
    # cross-fitting by hand on logits: every fold through a temperature fitted on the other folds only
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (150,), generator=g)
    z = 3 * torch.randn(150, 4, generator=g, dtype=torch.float64)
    z[torch.arange(150), y] += 3
    fold = torch.arange(150) % FOLDS
    by_hand = torch.empty_like(z)
    for f in range(FOLDS):
        by_hand[fold == f] = log_probabilities([z[fold == f]], fit_temperature(z[fold != f], y[fold != f]))
    assert torch.allclose(cross_fitted_log_probabilities([z], y), by_hand)


def test_run_json_records_the_temperature_and_both_eces(calibrated):
    run = json.loads((calibrated / "run" / "run.json").read_text())
    cal = run["calibration"]
    assert cal["split"] == "val" and cal["temperature"] != 1.0 and 0.05 <= cal["temperature"] <= 20
    assert run["metrics"]["temperature"] == cal["temperature"]
    assert {"ece", "ece_uncalibrated", "balanced_accuracy", "macro_f1"} <= set(run["metrics"])
    plain = json.loads((calibrated / "plain" / "run.json").read_text())
    assert plain["calibration"]["temperature"] == 1.0 and plain["calibration"]["split"] is None
    assert plain["calibration"]["method"] == "off (--no-calibrate)"
    small = json.loads((calibrated / "small" / "run.json").read_text())
    assert small["calibration"]["temperature"] == 1.0 and small["calibration"]["method"] == "none: 6 validation images"


def test_eval_json_applies_the_temperature_and_keeps_top1(calibrated, capsys):
    run_dir = calibrated / "run"
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--format", "json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    t = json.loads((run_dir / "run.json").read_text())["calibration"]["temperature"]
    assert result["temperature"] == t and {"ece", "ece_uncalibrated", "nll"} <= set(result)
    tm, pre, classes, _ = load_run(run_dir)
    outputs = np.load(run_dir / "eval" / "test_outputs.npz")
    raw = torch.from_numpy(outputs["probs_uncalibrated"].astype(np.float32))
    cal = torch.from_numpy(outputs["probs"].astype(np.float32))
    assert torch.allclose(probabilities(raw.log(), t), cal, atol=2e-3)  # softmax(log p / T) = calibrated p
    assert (raw.argmax(1) == cal.argmax(1)).all()
    # the same scores as a run without its temperature, apart from the probabilities
    shutil.copytree(run_dir, calibrated / "stripped")
    record = json.loads((calibrated / "stripped" / "run.json").read_text())
    del record["calibration"]  # what a run trained before calibration existed looks like
    (calibrated / "stripped" / "run.json").write_text(json.dumps(record))
    old = evaluate_run(str(calibrated / "stripped"))
    assert old["temperature"] == 1.0 and old["ece"] == old["ece_uncalibrated"]
    assert old["top1"] == result["top1"] and old["confusion_matrix"] == result["confusion_matrix"]
    assert old["ece"] == pytest.approx(result["ece_uncalibrated"], abs=1e-6)


def test_predict_api_and_serve_give_calibrated_probabilities(calibrated):
    run_dir = calibrated / "run"
    images = sorted((calibrated / "images" / "owl").glob("*.png"))[:3]
    t = json.loads((run_dir / "run.json").read_text())["calibration"]["temperature"]
    tm, pre, classes, _ = load_run(run_dir)
    from transferkit.data.images import load_uint8
    from transferkit.data.transforms import prepare

    raw = torch.from_numpy(np.stack([load_uint8(str(p), pre.size, pre.interpolation) for p in images]))
    with torch.inference_mode():
        logits = tm.net(prepare(raw, pre))
    expected = probabilities(logits, t)
    got = tk.predict(run_dir, [str(p) for p in images], topk=3, device="cpu")
    for row, want, z in zip(got, expected, logits):
        assert [p["index"] for p in row["predictions"]] == z.topk(3).indices.tolist()  # ranking unchanged
        assert [p["prob"] for p in row["predictions"]] == pytest.approx(want[z.topk(3).indices].tolist(), abs=1e-5)
    service = Service.from_run(run_dir)
    assert service.temperature == t and service.metadata(_settings())["calibration"]["temperature"] == t
    (probs, ranking), *_ = service.forward([raw[0].numpy()])
    assert torch.allclose(probs, expected[0], atol=1e-5)


def _settings():
    from transferkit.deploy.serve import ServeSettings

    return ServeSettings()


def test_export_keeps_raw_logits_and_carries_the_temperature(calibrated, capsys):
    need_extra("onnxruntime", "export")
    run_dir = calibrated / "run"
    t = json.loads((run_dir / "run.json").read_text())["calibration"]["temperature"]
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    sidecar = json.loads((run_dir / "model.onnx.json").read_text())
    assert sidecar["calibration"]["temperature"] == t
    import onnxruntime as ort

    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["temperature"]) == t and json.loads(meta["transferkit"])["calibration"]["temperature"] == t
    image = sorted((calibrated / "images" / "cat").glob("*.png"))[0]
    outs = {}
    for backend in ("torch", "onnx"):
        capsys.readouterr()
        assert main(["predict", str(run_dir), str(image), "--backend", backend, "--format", "json", "--quiet"]) == 0
        outs[backend] = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["index"] for p in outs["onnx"]] == [p["index"] for p in outs["torch"]]
    assert [p["prob"] for p in outs["onnx"]] == pytest.approx([p["prob"] for p in outs["torch"]], abs=1e-4)
    # the file itself holds raw logits: softmax of them differs from what predict printed
    tm, pre, _, _ = load_run(run_dir)
    from transferkit.data.images import load_uint8
    from transferkit.data.transforms import prepare

    x = prepare(torch.from_numpy(load_uint8(str(image), pre.size, pre.interpolation))[None], pre)
    logits = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.inference_mode():
        assert torch.allclose(logits, tm.net(x), atol=1e-4)
    assert outs["onnx"][0]["prob"] == pytest.approx(float(probabilities(logits, t).max()), abs=1e-5)


def test_report_shows_both_reliability_diagrams(calibrated):
    import base64
    import io
    import re

    from PIL import Image

    page = (calibrated / "run" / "report.html").read_text()
    assert "fitted on the val split" in page and "balanced accuracy" in page and "macro-F1" in page
    assert "not calibrated: the validation split has 6" in (calibrated / "small" / "report.html").read_text()
    data = re.search(r'alt="reliability diagram" src="data:image/png;base64,([^"]+)"', page).group(1)
    two = Image.open(io.BytesIO(base64.b64decode(data))).size
    plain = (calibrated / "plain" / "report.html").read_text()  # T = 1: the same curve twice, still both shown
    assert "not calibrated (--no-calibrate)" in plain
    # one column per curve: before and after the temperature, side by side
    old = calibrated / "old-outputs.npz"
    with np.load(calibrated / "run" / "eval" / "test_outputs.npz") as f:
        np.savez(old, **{k: f[k] for k in f.files if k != "probs_uncalibrated"})
    from transferkit.runs.report import render

    single = re.search(r'alt="reliability diagram" src="data:image/png;base64,([^"]+)"',
                       render(calibrated / "run", old)).group(1)
    one = Image.open(io.BytesIO(base64.b64decode(single))).size
    assert two[0] == pytest.approx(2 * one[0], rel=0.05) and two[1] == one[1]
