"""Code a run folder names runs only with --trust-code (trust_code=True in Python).

A run folder from elsewhere is made here from a real tiny run: its run.json and checkpoint are
edited to name a plugin in RUN_DIR/code/ that leaves a marker file when it is imported, and to name
code outside the folder and a torch.hub model. Every command that loads a run must refuse it,
naming the code and the flag, without running anything; with the flag the code runs.
"""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_TRAIN, fresh_process, make_image_folder, own_cache

import transferkit as tk
from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.engine import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("isolated_registry")
PLUGIN = "from pathlib import Path\n\nPath(__file__).with_name('RAN').write_text('imported')\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run and its images; each test edits its own copy."""
    root = tmp_path_factory.mktemp("trust")
    with own_cache(root / "cache"):
        images = make_image_folder(root / "images")
        assert main(["train", "--data", str(images), "--out", str(root / "run"), *TINY_TRAIN]) == 0
    return root / "run", images


@pytest.fixture
def tiny_run(trained, tmp_path):
    return shutil.copytree(trained[0], tmp_path / "run")


@pytest.fixture
def image_folder(trained):
    return trained[1]


def planted(run_dir, plugin: str = "@run/code/planted.py", model: str | None = None):
    """The run, edited as a downloaded one could be: run.json and the checkpoint name ``plugin``."""
    (run_dir / "code").mkdir(exist_ok=True)
    (run_dir / "code" / "planted.py").write_text(PLUGIN)
    record = json.loads((run_dir / "run.json").read_text())
    record["model"]["plugin"] = plugin
    if model:
        record["model"]["name"] = record["backbone"]["name"] = model
    (run_dir / "run.json").write_text(json.dumps(record))
    state = ckpt.load_checkpoint(run_dir)
    ckpt.save_checkpoint(run_dir, {**state, "plugin": plugin, **({"model_spec": model} if model else {})})
    return run_dir / "code" / "RAN"


def commands(run, image_folder, tmp_path):
    image = str(sorted(image_folder.rglob("*.png"))[0])
    return {"eval": ["eval", run, "--quiet"], "predict": ["predict", run, image, "--quiet"],
            "embed": ["embed", run, str(image_folder), "--out", str(tmp_path / "e.npz"), "--quiet"],
            "export": ["export", run, "--format", "torchscript"],
            "serve": ["serve", run, "--port", "0", "--backend", "torch"],
            "resume": ["train", "--out", run, "--resume", "--epochs", "2", "--quiet"]}


def test_every_command_refuses_a_run_that_would_run_code(tiny_run, image_folder, tmp_path, capsys):
    marker = planted(tiny_run)
    for name, argv in commands(str(tiny_run), image_folder, tmp_path).items():
        fresh_process()
        capsys.readouterr()
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "would run Python code when loaded: code/planted.py (its plugin)" in err, (name, err)
        assert "--trust-code" in err and len(err.strip().splitlines()) == 1, name
        assert not marker.exists(), f"{name} ran the run's code"
    for call in (lambda: tk.predict(tiny_run, [str(sorted(image_folder.rglob("*.png"))[0])]),
                 lambda: tk.evaluate(tiny_run),
                 lambda: tk.fit(str(image_folder), out=str(tiny_run), resume=True, epochs=2, quiet=True)):
        fresh_process()
        with pytest.raises(UserError, match="trust_code=True"):
            call()
        assert not marker.exists()


@pytest.mark.parametrize("name", ["eval", "predict", "export", "resume"])
def test_trust_code_runs_it(tiny_run, image_folder, tmp_path, name):
    marker = planted(tiny_run)
    fresh_process()
    argv = commands(str(tiny_run), image_folder, tmp_path)[name]
    assert main([*argv, "--trust-code"]) == 0
    assert marker.read_text() == "imported"


def test_python_api_takes_trust_code(tiny_run, image_folder):
    marker = planted(tiny_run)
    fresh_process()
    assert tk.evaluate(tiny_run, trust_code=True)["n"] > 0 and marker.exists()


def test_code_outside_the_folder_and_torch_hub_are_refused_too(tiny_run, tmp_path, capsys):
    outside = tmp_path / "elsewhere.py"
    outside.write_text(PLUGIN)
    planted(tiny_run, plugin=str(outside))
    assert main(["eval", str(tiny_run), "--quiet"]) == 2
    assert f"{outside} (its plugin)" in capsys.readouterr().err and not (tmp_path / "RAN").exists()
    planted(tiny_run, plugin=None, model="hub:someone/models:net")  # torch.hub would download and run hubconf.py
    assert main(["eval", str(tiny_run), "--quiet"]) == 2
    assert "the torch.hub repository someone/models (its model, downloaded and run)" in capsys.readouterr().err


def test_a_plugin_given_again_or_imported_already_runs_nothing_new(tiny_run, tmp_path, capsys):
    """The run's copy has the content of a file this process imported: importing it executes nothing."""
    planted(tiny_run)
    mine = tmp_path / "mine" / "planted.py"
    mine.parent.mkdir()
    shutil.copyfile(tiny_run / "code" / "planted.py", mine)
    fresh_process()
    assert main(["--plugin", str(mine), "eval", str(tiny_run), "--quiet"]) == 0
    assert (mine.parent / "RAN").exists() and not (tiny_run / "code" / "RAN").exists()  # only the user's own ran


def test_the_card_and_the_resume_hint_say_so(tiny_run, tmp_path, capsys):
    card = (tiny_run / "README.md").read_text()
    assert "holds no code of its own" in card and "--trust-code" in card
    planted(tiny_run)
    from transferkit.runs.hubfolder import write_model_folder

    write_model_folder(tiny_run)
    card = (tiny_run / "README.md").read_text()
    assert "runs Python code it names: `code/planted.py`" in card
    assert "transferkit predict RUN_DIR photo.jpg --topk 3 --trust-code" in card and "trust_code=True)" in card
    from transferkit.train.trainer import Interrupted

    assert str(Interrupted(tiny_run, {"model": "resnet18", "head": "linear", "plugin": "@run/code/planted.py"})).endswith(
        "--resume --trust-code")
    assert str(Interrupted(tiny_run, {"model": "resnet18", "head": "linear", "plugin": None})).endswith("--resume")
