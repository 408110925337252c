"""What the model card's upload publishes: the files loading the model needs, none of the user's
images, per-image outputs or paths of their machine; and a run folder of only those files works."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, make_image_folder, own_cache
from huggingface_hub.utils import filter_repo_objects
from safetensors import safe_open
from safetensors.torch import save_file

from transferkit.cli import main
from transferkit.models.transfer import create_model

SAFE = {"model.safetensors", "config.json", "README.md", "run.json"}


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records what the card's snippet would upload."""

    calls: list = []

    def create_repo(self, repo_id, exist_ok=False, **_):
        self.calls.append(("create_repo", repo_id))

    def upload_folder(self, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **_):
        self.calls.append(("upload_folder", folder_path, allow_patterns, ignore_patterns))


def uploaded(run_dir: Path, monkeypatch) -> set[str]:
    """Run the card's own upload snippet and list the files of ``run_dir`` it would send, as the Hub client filters them."""
    import huggingface_hub

    card = (run_dir / "README.md").read_text()
    code = re.search(r"## Files\n.*?```python\n(.*?)```", card, flags=re.S).group(1)
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    exec(code.replace("RUN_DIR", str(run_dir)), {})
    (_, folder, allow, ignore), = [c for c in RecordingApi.calls if c[0] == "upload_folder"]
    files = [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]
    return set(filter_repo_objects(files, allow_patterns=allow, ignore_patterns=ignore))


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """A run whose data, starting weights and cache live under a telling folder of this machine."""
    root = tmp_path_factory.mktemp("publish")
    private = root / "home-of-alice"
    images = make_image_folder(private / "holiday-photos")
    weights = private / "my-weights.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet18", 1000, "none").net.state_dict().items()}, str(weights))
    out = private / "runs" / "pets"
    with own_cache(root / "cache"):
        argv = [a for a in TINY_TRAIN if a != "none"]  # TINY_TRAIN's --weights none becomes the file
        argv[argv.index("--weights") + 1:argv.index("--weights") + 1] = [str(weights)]
        assert main(["train", "--data", str(images), "--out", str(out), "--cache-dir", str(private / "cache"),
                     *argv]) == 0
    return out, images, private


def test_the_upload_set_holds_what_loading_needs_and_nothing_private(private_run, monkeypatch):
    run_dir, images, private = private_run
    sent = uploaded(run_dir, monkeypatch)
    assert sent == SAFE
    assert {"report.html", "local.json", "eval/val_outputs.npz", "checkpoints/last.pt"} <= {
        p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}  # all there, none sent
    for name in sent - {"model.safetensors"}:
        text = (run_dir / name).read_text()
        assert str(private) not in text and "home-of-alice" not in text, name
    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        assert "home-of-alice" not in json.dumps(f.metadata())
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["data"] == run["data"]["spec"] == "holiday-photos" and run["config"]["out"] == "pets"
    assert run["config"]["cache_dir"] == "" and run["backbone"]["weights_source"] == "file my-weights.safetensors"
    local = json.loads((run_dir / "local.json").read_text())  # this machine's paths, kept beside it
    assert local["config"]["data"] == str(images) and local["config"]["cache_dir"] == str(private / "cache")
    card = (run_dir / "README.md").read_text()
    assert "`report.html` (thumbnails of your images" in card and "`local.json` (this machine's paths" in card


def test_the_run_works_here_and_as_published(private_run, tmp_path, capsys):
    run_dir, images, _ = private_run
    assert main(["eval", str(run_dir), "--quiet"]) == 0  # finds its data through local.json
    assert main(["report", str(run_dir)]) == 0
    assert "Thumbnails left out" not in (run_dir / "report.html").read_text()
    published = tmp_path / "downloaded"
    published.mkdir()
    for name in SAFE:
        shutil.copyfile(run_dir / name, published / name)
    image = str(sorted(images.rglob("*.png"))[0])
    capsys.readouterr()
    assert main(["predict", str(published), image, "--format", "json", "--quiet"]) == 0
    assert main(["eval", str(published), "--data", str(images), "--quiet"]) == 0
