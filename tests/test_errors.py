"""Every user mistake on every subcommand: exit status 2 and exactly one line on stderr."""
from __future__ import annotations

import pytest

from transferkit.cli import main


@pytest.fixture
def files(tmp_path, image_folder):
    (tmp_path / "bad_type.yaml").write_text("epochs: ten\n")
    (tmp_path / "unknown_key.yaml").write_text("epochz: 3\n")
    (tmp_path / "not_yaml.yaml").write_text("epochs: [1, 2\n")
    (tmp_path / "rows.csv").write_text("path,label\nonly_one_column\n")
    (tmp_path / "plain_dir").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    return {"tmp": tmp_path, "images": image_folder}


TRAIN = ["train", "--quiet", "--epochs", "1"]
CASES = {
    "unknown subcommand": ["fly"],
    "unknown flag": ["models", "--colour"],
    "train without data": [*TRAIN],
    "train missing data path": [*TRAIN, "--data", "{tmp}/nowhere"],
    "train unknown model": [*TRAIN, "--data", "{images}", "--model", "resnet19"],
    "train bad freeze": [*TRAIN, "--data", "{images}", "--weights", "none", "--model", "resnet18", "--freeze", "layer9"],
    "train bad head": [*TRAIN, "--data", "{images}", "--weights", "none", "--model", "resnet18", "--head", "mlp:x"],
    "train bad batch size": [*TRAIN, "--data", "{images}", "--batch-size", "lots"],
    "train negative epochs": [*TRAIN, "--data", "{images}", "--epochs", "0"],
    "train int flag given text": [*TRAIN, "--data", "{images}", "--image-size", "big"],
    "train missing weights file": [*TRAIN, "--data", "{images}", "--weights", "{tmp}/w.safetensors"],
    "train bad yaml type": [*TRAIN, "--data", "{images}", "--config", "{tmp}/bad_type.yaml"],
    "train unknown yaml key": [*TRAIN, "--data", "{images}", "--config", "{tmp}/unknown_key.yaml"],
    "train invalid yaml": [*TRAIN, "--data", "{images}", "--config", "{tmp}/not_yaml.yaml"],
    "train missing yaml": [*TRAIN, "--data", "{images}", "--config", "{tmp}/none.yaml"],
    "train bad csv": [*TRAIN, "--data", "{tmp}/rows.csv"],
    "train data is a text file": [*TRAIN, "--data", "{tmp}/notes.txt"],
    "train one class folder": [*TRAIN, "--data", "{tmp}/plain_dir"],
    "train bad device": [*TRAIN, "--data", "{images}", "--device", "tpu"],
    "train resume without checkpoint": ["train", "--out", "{tmp}/plain_dir", "--resume"],
    "eval not a run": ["eval", "{tmp}/plain_dir"],
    "eval bad split": ["eval", "{tmp}/plain_dir", "--split", "holdout"],
    "predict not a run": ["predict", "{tmp}/plain_dir", "{images}"],
    "predict missing image": ["predict", "--model", "efficientnet_lite0", "{tmp}/missing.jpg"],
    "predict unknown model": ["predict", "--model", "nonet", "{images}"],
    "data check missing": ["data", "check", "{tmp}/nowhere"],
    "embed bad extension": ["embed", "--model", "efficientnet_lite0", "digits", "--out", "{tmp}/x.txt"],
    "demo over a foreign folder": ["demo", "--out", "{tmp}/plain_dir"],
    "report not a run": ["report", "{tmp}/plain_dir"],
    "export not a run": ["export", "{tmp}/plain_dir", "--format", "onnx"],
}


def exit_status(argv) -> int:
    """main()'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_exits_2_with_one_line(case, files, capsys, monkeypatch):
    argv = [a.format(**files) for a in CASES[case]]
    work = files["tmp"] / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # train without --out would make runs/NAME-TIME here
    assert exit_status(argv) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    assert list(work.iterdir()) == [], "a failed command left folders behind"


def closed_pipe_run(*args: str) -> tuple[int, str]:
    """Run ``transferkit ARGS`` with stdout a pipe whose reader has already gone (as ``| head`` after
    its lines): the read end is closed before the command starts, so every write meets EPIPE."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


def test_a_reader_that_leaves_early_ends_commands_quietly(tiny_run, image_folder):
    """`transferkit models --offline | head -1` and the like: exit 141 (SIGPIPE's status), no traceback."""
    for args in (["models", "--offline"], ["data", "check", str(image_folder)],
                 ["predict", str(tiny_run), str(image_folder), "--quiet"], ["eval", str(tiny_run), "--quiet"]):
        code, err = closed_pipe_run(*args)
        assert code == 141 and "Traceback" not in err and "Error" not in err, (args, err)  # progress lines only
