"""Data-parallel runs under torchrun: two CPU processes (gloo) behave like one process.

Each test starts ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m transferkit ...``
(torchrun) in a subprocess (PYTHONPATH=src), with every rank's stdout/stderr in its own log file. A
``sitecustomize`` audit hook makes rank 1 report any file it opens for writing, renames or
creates under the run directory, so "rank 1 wrote nothing and printed nothing" is checked by
rank 1's logs being empty.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder, pause_plugin, wait_until_paused

from transferkit.cli import main
from transferkit.core.safeio import load_torch_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAD_ONLY = ["--model", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "4",
             "--epochs", "3", "--seed", "3", "--quiet"]
# The whole network trains (BatchNorm in train mode, no cache), slowly enough to be killed mid-run.
FULL = ["--model", "resnet18", "--weights", "none", "--freeze", "none", "--no-feature-cache", "--image-size", "32",
        "--batch-size", "4", "--epochs", "4", "--checkpoint-every", "2", "--seed", "5", "--quiet"]

AUDIT = textwrap.dedent("""
    import os, sys
    _root = os.environ.get("TK_AUDIT_DIR")
    if _root and os.environ.get("RANK", "0") != "0":
        def _inside(path):
            return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(_root)

        def _hook(event, args):
            writes = False
            if event == "open" and _inside(args[0]):
                mode, flags = args[1], args[2]
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags != -1 and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir") and _inside(args[0]):
                writes = True
            if writes:
                sys.stderr.write(f"rank {os.environ['RANK']} touched {args[0]} ({event})\\n")
        sys.addaudithook(_hook)
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 24 images: 20 train (5 global batches of 4, 2 per process), 4 val.
    return make_image_folder(tmp_path_factory.mktemp("ddp") / "images", per_class=12, size=24)


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audit")
    (folder / "sitecustomize.py").write_text(AUDIT)
    return folder


def torchrun(tmp: Path, audit: Path, name: str, *args, watch: str = "run", restarts: int = 0,
             env: dict | None = None) -> subprocess.Popen:
    """Two processes on the CPU, in ``tmp``; rank logs under tmp/logs/<name>; rank 1 audited in tmp/<watch>."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(audit)]), TK_AUDIT_DIR=str(tmp / watch),
               OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               f"--max-restarts={restarts}", "--monitor-interval=0.2", "--log-dir", str(tmp / "logs" / name),
               "--redirects", "3", *args]
    return subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logs(tmp: Path, name: str, rank: int, stream: str = "stderr") -> str:
    """What ``rank`` printed, over every attempt (torchrun restarts) of the launch ``name``."""
    return "".join(p.read_text() for p in sorted((tmp / "logs" / name).rglob(f"attempt_*/{rank}/{stream}.log")))


def finish(proc: subprocess.Popen, tmp: Path, name: str, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (f"{err[-3000:]}\nrank 0:\n{logs(tmp, name, 0)[-3000:]}\n"
                                  f"rank 1:\n{logs(tmp, name, 1)[-3000:]}")


def weights(run: Path) -> dict:
    return load_torch_file(run / "checkpoints" / "last.pt")["model"]


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--cache-dir", str(out.parent / "cache"), *HEAD_ONLY]) == 0
    return out


def test_two_processes_match_one(data, audit_dir, one_process, tmp_path):
    """Head-only training (resnet18 frozen, fc trained from the feature cache), global batch 4:
    one process vs two processes of 2 images each.

    The trained part is a single nn.Linear: no BatchNorm or dropout, so both runs compute the same
    gradients and differ only in float summation order (DDP adds two half-batch gradients; the loss
    and accuracy sums go through a float64 all-reduce): final weights agree to 1e-5, scores too.
    With ``--freeze none`` each process's BatchNorm would normalise with the statistics of its own
    2 images instead of all 4, and the weights would drift far more than that.
    """
    proc = torchrun(tmp_path, audit_dir, "train", "-m", "transferkit", "train", "--data", str(data), "--out", "run",
                    "--cache-dir", "cache", *HEAD_ONLY)
    finish(proc, tmp_path, "train")
    two = tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs", "run"]  # one run dir, nothing else
    assert logs(tmp_path, "train", 1) == logs(tmp_path, "train", 1, "stdout") == ""  # rank 1: no output, no writes
    assert "run directory: run" in logs(tmp_path, "train", 0, "stdout")
    assert largest_difference(weights(one_process), weights(two)) <= 1e-5
    run_one, run_two = (json.loads((r / "run.json").read_text()) for r in (one_process, two))
    assert run_two["distributed"] == {"processes": 2, "backend": "gloo"}
    assert run_one["metrics"]["top1"] == run_two["metrics"]["top1"] and run_one["metrics"]["n"] == run_two["metrics"]["n"]
    assert run_two["metrics"]["loss"] == pytest.approx(run_one["metrics"]["loss"], abs=1e-5)
    rows_one, rows_two = ((r / "metrics.csv").read_text().splitlines() for r in (one_process, two))
    assert len(rows_one) == len(rows_two) == 4
    for a, b in zip(rows_one[1:], rows_two[1:]):  # train and val numbers: the whole batch's, on every process
        assert [float(x) for x in a.split(",")[1:6]] == pytest.approx([float(x) for x in b.split(",")[1:6]], abs=1e-5)


def test_eval_and_embed_under_torchrun_match_one_process(data, audit_dir, one_process, tmp_path):
    """Each process scores (embeds) its share of the split; the gathered result is the whole split
    in order. Rows are computed independently in eval mode: equal up to float noise (1e-5)."""
    from transferkit.deploy.embed import embed
    from transferkit.runs.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(one_process, run)
    single = evaluate_run(str(run))
    embed(str(run), str(data), str(tmp_path / "one.npz"), from_run=True)
    script = tmp_path / "both.py"  # one process group set up and left twice in the same processes
    script.write_text(textwrap.dedent(f"""
        import sys
        from transferkit.cli import main
        sys.exit(main(["eval", "run", "--format", "json", "--quiet"])
                 or main(["embed", "run", {str(data)!r}, "--out", "run/two.npz", "--quiet"]))
    """))
    proc = torchrun(tmp_path, audit_dir, "both", str(script))
    finish(proc, tmp_path, "both")
    assert logs(tmp_path, "both", 1) == logs(tmp_path, "both", 1, "stdout") == ""
    out = logs(tmp_path, "both", 0, "stdout")
    gathered = json.loads(out[:out.rindex("}") + 1])
    assert gathered["n"] == single["n"] and gathered["top1"] == single["top1"]
    assert gathered["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert gathered["confusion_matrix"] == single["confusion_matrix"]
    a, b = np.load(tmp_path / "one.npz"), np.load(run / "two.npz")
    assert list(a["path"]) == list(b["path"]) and list(a["split"]) == list(b["split"])
    np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)


def find_worker(torchrun_pid: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def kill_rank_1_after_the_first_checkpoint(proc: subprocess.Popen, marker: Path) -> int:
    """SIGKILL to rank 1 while rank 0 is held right after the first checkpoint (step 2, mid-epoch 1):
    the kill lands at that step on any machine. Returns the step."""
    step = wait_until_paused(marker, proc)
    worker = find_worker(proc.pid, 1)
    assert worker is not None, "rank 1's process not found"
    os.kill(worker, signal.SIGKILL)
    return step


@pytest.fixture(scope="module")
def uninterrupted(data, audit_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = torchrun(tmp, audit_dir, "train", "-m", "transferkit", "train", "--data", str(data), "--out", "run", *FULL)
    finish(proc, tmp, "train")
    return tmp / "run"


def test_resume_after_a_worker_is_killed(data, audit_dir, uninterrupted, tmp_path):
    """SIGKILL to rank 1 mid-run: torchrun tears the job down; ``--resume`` under torchrun finishes
    it with the weights of the uninterrupted two-process run (same processes, same order: 1e-6)."""
    plugin, env, marker = pause_plugin(tmp_path)
    proc = torchrun(tmp_path, audit_dir, "killed", "-m", "transferkit", *plugin, "train", "--data", str(data),
                    "--out", "run", *FULL, env=env)
    assert kill_rank_1_after_the_first_checkpoint(proc, marker) == 2
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "run" / "run.json").exists()
    state = load_torch_file(tmp_path / "run" / "checkpoints" / "last.pt")["state"]
    assert (state["global_step"], state["epoch"], state["batch"]) == (2, 0, 2)
    resumed = torchrun(tmp_path, audit_dir, "resumed", "-m", "transferkit", "train", "--out", "run", "--resume", "--quiet")
    finish(resumed, tmp_path, "resumed")
    assert "resuming run" in logs(tmp_path, "resumed", 0)
    assert logs(tmp_path, "resumed", 1) == ""
    assert largest_difference(weights(tmp_path / "run"), weights(uninterrupted)) <= 1e-6
    assert (json.loads((tmp_path / "run" / "run.json").read_text())["metrics"]
            == json.loads((uninterrupted / "run.json").read_text())["metrics"])


def test_torchrun_restart_continues_from_the_checkpoint(data, audit_dir, uninterrupted, tmp_path):
    """With ``--max-restarts 1`` torchrun starts both workers again after rank 1 dies; they run the
    same command (no --resume) and continue from the checkpoint instead of starting over."""
    plugin, env, marker = pause_plugin(tmp_path)
    proc = torchrun(tmp_path, audit_dir, "restarted", "-m", "transferkit", *plugin, "train", "--data", str(data),
                    "--out", "run", *FULL, restarts=1, env=env)
    assert kill_rank_1_after_the_first_checkpoint(proc, marker) == 2
    finish(proc, tmp_path, "restarted")
    assert "torchrun restart 1: continuing run" in logs(tmp_path, "restarted", 0)
    assert largest_difference(weights(tmp_path / "run"), weights(uninterrupted)) <= 1e-6


def test_sigterm_stops_every_worker_with_a_checkpoint(data, audit_dir, tmp_path):
    """SIGTERM to torchrun while rank 0 is held after the checkpoint of step 2 (rank 1 already waits
    in step 3's collectives) reaches every worker; they agree to stop after step 3, mid-epoch, rank 0
    checkpoints it and says how to resume, and no worker hangs in a collective (torchrun would
    otherwise kill it after 30 s and say so)."""
    args = list(FULL)
    args[args.index("--epochs") + 1] = "500"  # no end in sight: only the signal stops it
    plugin, env, marker = pause_plugin(tmp_path)
    proc = torchrun(tmp_path, audit_dir, "stopped", "-m", "transferkit", *plugin, "train", "--data", str(data),
                    "--out", "run", *args, env=env)
    assert wait_until_paused(marker, proc) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert "forcefully" not in err, err[-3000:]
    assert "--out run --resume" in logs(tmp_path, "stopped", 0)
    assert logs(tmp_path, "stopped", 1) == ""
    state = load_torch_file(tmp_path / "run" / "checkpoints" / "last.pt")["state"]
    assert (state["global_step"], state["epoch"], state["batch"]) == (3, 0, 3)  # 5 steps per epoch
