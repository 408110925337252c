"""report.html: written by train, report and eval --report; self-contained; renders in a real browser.

The browser checks run Debian's headless Chromium (``make test`` installs it when apt is usable
as root) and skip, saying so, when it is not there.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_image_folder, need_extra
from PIL import Image

from transferkit.cli import main
from transferkit.data.specs import load_data
from transferkit.runs.evaluate import save_outputs
from transferkit.runs.report import load_outputs, worst_errors
from transferkit.runs.rundir import read_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One trained run shared by the read-only tests: 3 classes, 2 epochs (so curves have two points)."""
    root = tmp_path_factory.mktemp("report")
    folder = make_image_folder(root / "images", classes=("cat", "dog", "fox"), per_class=6)
    out = root / "run"
    assert main(["train", "--data", str(folder), "--out", str(out), "--cache-dir", str(root / "cache"),
                 *TINY_TRAIN, "--epochs", "2"]) == 0
    return out


class _Refs(HTMLParser):
    """Every tag name and every attribute that could load something."""

    def __init__(self):
        super().__init__()
        self.tags, self.refs, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action", "background"):
                self.refs.append((tag, name, value or ""))
            if tag == "img" and name == "src":
                self.images.append(value or "")


def static_problems(page: str) -> list[str]:
    """Why ``page`` is not self-contained or has a broken image; empty when it is fine."""
    parser = _Refs()
    parser.feed(page)
    problems = [f"<{t} {n}={v[:40]}> is not an inline PNG" for t, n, v in parser.refs
                if not (t == "img" and n == "src" and v.startswith("data:image/png;base64,"))]
    problems += [f"<{t}> may load or run something" for t in set(parser.tags) & {"script", "link", "iframe", "object", "embed"}]
    if "url(" in page or "@import" in page:
        problems.append("CSS refers to an outside resource")
    for i, src in enumerate(parser.images):
        try:
            Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))).verify()
        except Exception as exc:  # noqa: BLE001 - any failure to decode is the finding
            problems.append(f"image {i} does not decode: {exc}")
    return problems


def test_train_writes_a_complete_self_contained_report(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert static_problems(page) == []
    for heading in ("Training", "Confusion matrix", "Per-class scores", "Worst errors", "Calibration", "Settings"):
        assert f"<h2>{heading}</h2>" in page
    for alt in ("loss and accuracy per epoch", "learning rate per epoch", "confusion matrix", "reliability diagram"):
        assert f'alt="{alt}"' in page
    run = json.loads((run_dir / "run.json").read_text())
    assert run["backbone"]["name"] in page and "expected calibration error" in page
    for name in ("cat", "dog", "fox"):
        assert f"<td>{name}</td>" in page  # per-class table rows


def test_outputs_file_matches_the_final_scores(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    outputs = load_outputs(run_dir / "eval" / f"{run['metrics']['split']}_outputs.npz")
    assert outputs["probs"].shape == (run["metrics"]["n"], 3)
    assert np.allclose(outputs["probs"].sum(1), 1, atol=1e-2)
    assert sorted(outputs["index"].tolist()) == list(range(run["metrics"]["n"]))
    top1 = float((outputs["probs"].argmax(1) == outputs["labels"]).mean())
    assert top1 == pytest.approx(run["metrics"]["top1"])


def test_gallery_shows_the_most_confident_errors_with_their_images(run_dir, tmp_path, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    meta = read_run(run)  # with local.json: where the data is on this machine
    val = load_data(meta["config"]["data"], meta["config"]["seed"]).split("val")
    labels = val.labels
    # Every image predicted as the next class; the first with probability 0.9, the others lower.
    wrong = (labels + 1) % 3
    logits = torch.full((len(labels), 3), -4.0)
    logits[torch.arange(len(labels)), wrong] = torch.linspace(2, 0, len(labels))
    save_outputs(run, "val", logits, labels, val, val, meta["config"]["data"])
    errors = worst_errors(load_outputs(run / "eval" / "val_outputs.npz"))
    assert [e["row"] for e in errors] == list(range(len(labels)))
    assert [e["pred"] for e in errors] == wrong.tolist()
    assert errors[0]["p_pred"] > errors[-1]["p_pred"]

    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run / "report.html").read_text(encoding="utf-8")
    assert static_problems(page) == []
    assert page.count('class="thumb"') == len(labels)  # a real thumbnail for every error
    assert f"The {len(labels)} most confident wrong predictions" in page


def test_report_without_outputs_or_data_still_renders(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "moved")
    shutil.rmtree(run / "eval")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert static_problems(page) == [] and "No per-image outputs" in page

    # Outputs present but the data set gone (the run copied to another machine): no thumbnails, a note.
    meta = read_run(run)  # with local.json: where the data is on this machine
    val = load_data(meta["config"]["data"], meta["config"]["seed"]).split("val")
    logits = torch.zeros(len(val), 3)
    logits[:, 0] = -5  # nothing predicted as cat: the cat image is an error
    save_outputs(run, "val", logits, val.labels, val, val, str(tmp_path / "gone"))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Thumbnails left out" in page and "image unavailable" in page and static_problems(page) == []


def test_report_of_a_folder_that_is_no_run_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_eval_on_other_data_writes_its_report(run_dir, tmp_path, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    other = make_image_folder(tmp_path / "other", classes=("dog", "fox"), per_class=3, seed=5)
    out = tmp_path / "other-report.html"
    assert main(["eval", str(run), "--data", str(other), "--split", "val", "--report", str(out), "--quiet"]) == 0
    assert "report:" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert static_problems(page) == []
    assert f"scored on {other}, val split" in page
    assert main(["eval", str(run), "--report", str(tmp_path / "r.txt"), "--quiet"]) == 2


def test_static_check_catches_a_broken_image_and_an_outside_link(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert static_problems(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert static_problems(page.replace("</body>", '<img src="https://example.org/x.png"></body>'))


def test_log_tensorboard_writes_scalars(image_folder, tmp_path):
    need_extra("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), "--out", str(out), *TINY_TRAIN, "--epochs", "2",
                 "--log", "tensorboard"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss/train", "loss/val", "accuracy/val", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2]


def test_log_tensorboard_without_the_package_is_a_user_error(image_folder, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                 "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'transferkit[tensorboard]'" in err and len(err.strip().splitlines()) == 1


# ---- in a real browser -------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]

# Appended to a copy of the page: after load, write what the browser saw into the DOM for --dump-dom.
# Resource Timing lists every fetch the page started (failed ones too); data: URIs are not fetches.
PROBE = """<script>window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var seen = {images: images.length,
              broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
              fetched: performance.getEntriesByType('resource').map(function (e) { return e.name; })};
  var out = document.createElement('pre'); out.id = 'probe'; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.skip("Debian's chromium is not installed (`make test` installs it when apt-get is usable as root); "
                    "report.html was not rendered in a browser")
    return found


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def browser_view(page: Path, tmp_path: Path) -> dict:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    start = done.stdout.find('<pre id="probe">')
    assert start >= 0, f"the probe did not run: {done.stderr[-800:]}"
    text = done.stdout[start + len('<pre id="probe">'):done.stdout.index("</pre>", start)]
    return json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))


def test_report_renders_in_chromium(run_dir, tmp_path):
    page = run_dir / "report.html"
    seen = browser_view(page, tmp_path)
    assert seen["images"] >= 4 and seen["broken"] == [] and seen["fetched"] == []

    shot = tmp_path / "report.png"
    done = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    assert shot.is_file(), done.stderr[-800:]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (3000, 1200, 3)
    not_white = (image < 240).any(axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    assert not_white > 0.05 and colours > 50, (not_white, colours)  # text, plots and colours, not a blank page


def test_browser_check_catches_a_broken_image_and_a_fetch(run_dir, tmp_path):
    broken = tmp_path / "broken.html"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    page = page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken.write_text(page.replace("</body>", '<img alt="remote" src="https://example.org/x.png"></body>'),
                      encoding="utf-8")
    seen = browser_view(broken, tmp_path)
    assert len(seen["broken"]) == 2 and "remote" in seen["broken"]
    assert seen["fetched"] == ["https://example.org/x.png"]
