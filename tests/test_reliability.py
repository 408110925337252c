"""Nothing lost, nothing executed: atomic writes, exact resume after kill -9, signals, NaN, unsafe pickles."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from transferkit.cli import main
from transferkit.core.errors import UserError
from transferkit.core.safeio import atomic_write, check_torch_version, load_torch_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
RESUME_ARGS = ["--model", "mobilenet_v3_small", "--weights", "none", "--freeze", "none", "--no-cache",
               "--image-size", "32", "--batch-size", "2", "--epochs", "3", "--seed", "7", "--quiet"]


def cli(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen([sys.executable, "-m", "transferkit", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def final_weights(run: Path) -> dict:
    return load_torch_file(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "images", per_class=12, size=24)


@pytest.fixture(scope="module")
def reference_run(resume_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = cli("train", "--data", str(resume_data), "--out", str(out), *RESUME_ARGS)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    return out


@pytest.mark.parametrize("every", [0, 5], ids=["between-epochs", "mid-epoch"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(resume_data, reference_run, tmp_path, every):
    out = tmp_path / "run"
    proc = cli("train", "--data", str(resume_data), "--out", str(out), "--checkpoint-every", str(every), *RESUME_ARGS)
    wait_for(out / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists(), "the run finished before it was killed"
    state = load_torch_file(out / "checkpoints" / "last.pt")["state"]
    assert (state["batch"] > 0) == (every > 0)  # mid-epoch kill resumes inside an epoch
    resumed = cli("train", "--out", str(out), "--resume", "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1]
    ours, reference = final_weights(out), final_weights(reference_run)
    assert ours.keys() == reference.keys()
    worst = max(float((ours[k].double() - reference[k].double()).abs().max()) for k in ours if ours[k].is_floating_point())
    assert worst <= 1e-6
    assert json.loads((out / "run.json").read_text())["metrics"] == json.loads((reference_run / "run.json").read_text())["metrics"]


def test_sigterm_checkpoints_and_exits_nonzero(resume_data, tmp_path):
    out = tmp_path / "run"
    args = [a if a != "3" else "200" for a in RESUME_ARGS]  # long enough to be interrupted
    proc = cli("train", "--data", str(resume_data), "--out", str(out), "--checkpoint-every", "3", *args)
    wait_for(out / "checkpoints" / "last.pt", proc)
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    # A few seconds on an idle machine; the bound leaves room for a loaded CI runner.
    assert proc.returncode != 0 and time.time() - started < 20
    assert f"--out {out} --resume" in err
    assert load_torch_file(out / "checkpoints" / "last.pt")["state"]["global_step"] >= 3


def test_write_killed_halfway_leaves_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    torch.save({"epoch": 1}, target)
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from transferkit.core.safeio import atomic_write
        def slow(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 1_000_000); f.flush()
                print("writing", flush=True); time.sleep(60)
        atomic_write({str(target)!r}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_torch_file(target) == {"epoch": 1}


def test_failed_write_cleans_up(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_non_finite_loss_stops_with_epoch_and_step(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(image_folder), "--out", str(out), "--model", "resnet18", "--weights", "none",
                 "--freeze", "none", "--no-cache", "--image-size", "16", "--batch-size", "2", "--lr", "1e30",
                 "--warmup-epochs", "0", "--epochs", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "epoch 1" in err and "step" in err
    last = out / "checkpoints" / "last.pt"
    if last.exists():
        assert all(torch.isfinite(t).all() for t in final_weights(out).values() if t.is_floating_point())
    assert not (out / "checkpoints" / "best.safetensors").exists() or not (out / "model.safetensors").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(image_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil(marker)}, f)
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18",
                 "--weights", str(evil), "--epochs", "1", "--quiet"])
    assert code == 2 and "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_old_torch_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(UserError, match="torch>=2.6"):
        check_torch_version()


def _serve_weights_at(monkeypatch, tmp_path, url: str):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", url)


def test_download_hash_mismatch_deletes_and_stops(monkeypatch, tmp_path, image_folder, capsys):
    fake = tmp_path / "served" / "resnet18-f37072fd.pth"  # the name promises a sha256 prefix the content lacks
    fake.parent.mkdir()
    torch.save({"not": torch.zeros(1)}, fake)
    _serve_weights_at(monkeypatch, tmp_path, fake.as_uri())
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "hash" in err
    assert not any((tmp_path / "torch").rglob("*.pth"))


def test_offline_download_names_the_offline_choices(monkeypatch, tmp_path, image_folder, capsys):
    _serve_weights_at(monkeypatch, tmp_path, "http://127.0.0.1:9/resnet18-f37072fd.pth")  # nothing listens there
    code = main(["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--model", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "efficientnet_lite0" in err and "--weights" in err and len(err.strip().splitlines()) == 1
