"""The cache-folder policy (core/cachedir.py) with real processes: one builder per entry, the others
wait and reuse it; a builder killed halfway leaves a partial file that the next run rebuilds; and
`transferkit cache list|clear`.

The order of the processes is decided by files, never by sleeping: a builder started with
``TRANSFERKIT_CACHE_TEST_PAUSE=DIR`` holds the entry's lock and its partial file, writes
``DIR/building-...`` and waits for ``DIR/go``; the test starts the second process, reads its
stderr until it says it is waiting, and only then creates ``go``.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from filelock import FileLock

from transferkit.cli import main
from transferkit.core import cachedir
from transferkit.core.safeio import load_torch_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
BUILDER = textwrap.dedent("""
    import os
    import sys
    from pathlib import Path
    from transferkit.core import cachedir

    root, payload = Path(sys.argv[1]), sys.argv[2].encode()
    events = Path(sys.argv[3]) if len(sys.argv) > 3 else None  # "start PID" / "end PID" of each build, appended
    entry = cachedir.Entry(root, "images", "k")

    def note(what):
        if events:
            with open(events, "a") as f:
                f.write(f"{what} {os.getpid()}\\n")

    def create(partial):
        note("start")
        partial.write_bytes(bytes(len(payload)))

    def fill(partial, _info):
        with open(partial, "r+b") as f:
            f.write(payload)
        return len(payload)

    def finish(info, shares):
        note("end")
        return {"n": sum(shares), "about": "test"}

    meta, built = cachedir.build(entry, "data.bin", complete=lambda meta, path: path.stat().st_size == len(payload),
                                 create=create, fill=fill, finish=finish, what="test cache")
    print("built" if built else "reused", entry.data_path(meta).read_text())
""")


class Lines:
    """A process's stderr, line by line, read by a thread so that waiting for a line has a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.seen, self._queue = [], queue.Queue()

        def read():
            for line in proc.stderr:
                self._queue.put(line)
        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            self.seen.append(self._queue.get(timeout=max(0.01, deadline - time.monotonic())))

    def rest(self) -> str:
        while not self._queue.empty():
            self.seen.append(self._queue.get())
        return "".join(self.seen)


def start(args: list[str], cwd: Path, pause: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    env.pop(cachedir.PAUSE_ENV, None)
    if pause:
        env[cachedir.PAUSE_ENV] = str(pause)
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until_building(proc: subprocess.Popen, pause: Path, timeout: float = 120, doing: str = "building") -> None:
    """Until the paused builder holds its lock and partial file (it writes a marker file then);
    ``doing="clearing"``: until a paused `cache clear` holds an entry's lock."""
    deadline = time.monotonic() + timeout
    while not list(pause.glob(f"{doing}-*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the builder never started building"
        time.sleep(0.01)


def partial_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.partial"))


def paused_builder(tmp_path: Path, code: str = BUILDER):
    """``(process, script, pause folder, cache root)``: a builder (``code``) holding the lock, paused halfway."""
    script, pause, root = tmp_path / "build.py", tmp_path / "pause", tmp_path / "cache"
    script.write_text(code)
    pause.mkdir()
    proc = start([str(script), str(root), "one"], tmp_path, pause)
    wait_until_building(proc, pause)
    return proc, script, pause, root


def test_a_second_builder_waits_for_the_first_and_reuses_its_entry(tmp_path):
    first, script, pause, root = paused_builder(tmp_path)
    [partial] = partial_files(root)
    second = start([str(script), str(root), "two"], tmp_path)
    second_err = Lines(second)
    second_err.wait_for("waiting for another process that is building the test cache")
    assert partial.exists()  # the waiting process never touches the builder's partial file
    (pause / "go").touch()
    out_first, _ = first.communicate(timeout=120)
    out_second, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, second_err.rest()
    assert out_first.strip() == "built one" and out_second.strip() == "reused one"
    assert partial_files(root) == [] and (root / "images" / "k" / "data.bin").read_text() == "one"


def test_a_builder_killed_halfway_leaves_a_partial_that_the_next_run_rebuilds(tmp_path):
    killed, script, pause, root = paused_builder(tmp_path)
    killed.kill()
    killed.communicate(timeout=60)
    assert partial_files(root) and not (root / "images" / "k" / "meta.json").exists()
    again = start([str(script), str(root), "again"], tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "a process stopped while writing it" in err and out.strip() == "built again"
    assert partial_files(root) == []


TRAIN = ["-m", "transferkit", "train", "--data", "images", "--model", "resnet18", "--weights", "none",
         "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--seed", "3", "--quiet", "--cache-dir", "cache",
         "--no-data-cache"]


def test_two_training_runs_share_one_feature_cache_build(tmp_path, image_folder):
    """Two `train` processes that need the same feature cache at once (a sweep): before, the second one
    deleted the first one's partial file and one crashed (FileNotFoundError). Now each entry is built
    once, both runs finish, and they train the same weights."""
    pause = tmp_path / "pause"
    pause.mkdir()
    first = start([*TRAIN, "--out", "run1"], tmp_path, pause)
    wait_until_building(first, pause)
    assert "building-features" in next(pause.glob("building-*")).name
    second = start([*TRAIN, "--out", "run2"], tmp_path)
    second_err = Lines(second)
    second_err.wait_for("waiting for another process that is building the feature cache")
    (pause / "go").touch()
    _, err_first = first.communicate(timeout=300)
    second.communicate(timeout=300)
    assert first.returncode == 0, err_first[-3000:]
    assert second.returncode == 0, second_err.rest()[-3000:]
    lines = [next(line for line in err.splitlines() if line.startswith("feature cache: on"))
             for err in (err_first, second_err.rest())]
    built = [int(line.split("built ")[1].split()[0]) if "built " in line else 0 for line in lines]
    assert sum(built) == 12 and built[0] >= 10  # every image's features computed once; the first run did train's
    assert partial_files(tmp_path / "cache") == []
    a, b = (load_torch_file(tmp_path / run / "checkpoints" / "last.pt")["model"] for run in ("run1", "run2"))
    assert all((a[k] == b[k]).all() for k in a)


def test_cache_list_and_clear_skip_an_entry_being_built(tmp_path, capsys):
    root = tmp_path / "cache"
    for key in ("a", "b"):
        entry = cachedir.Entry(root, "images", key)
        cachedir.build(entry, "data.bin", complete=lambda meta, path: True, create=lambda p: p.write_bytes(b"x" * 5000),
                       fill=lambda p, i: None, finish=lambda i, s: {"about": f"entry {key}"}, what="test cache")
    assert main(["cache", "list", "--cache-dir", str(root), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in listed["entries"]] == ["a", "b"] and all(e["complete"] for e in listed["entries"])
    assert listed["bytes"]["images"] >= 10000 and listed["bytes"]["features"] == 0
    assert main(["cache", "list", "--cache-dir", str(root)]) == 0
    assert "images: 2 entries" in capsys.readouterr().out
    with FileLock(str(cachedir.Entry(root, "images", "b").lock_path)):  # as if a run were building "b" now
        assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
        out = capsys.readouterr().out
    assert "removed 1 cache entry" in out and "skipped" in out and (root / "images" / "b").is_dir()
    assert not (root / "images" / "a").exists()
    assert main(["cache", "clear", "--cache-dir", str(root), "--kind", "images"]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "images").iterdir()) == ["a.lock", "b.lock"]  # the lock files stay
    assert main(["cache", "list", "--cache-dir", str(root)]) == 0
    assert "images: 0 entries" in capsys.readouterr().out  # and are not entries


def test_cache_clear_keeps_the_lock_so_a_waiter_never_builds_beside_a_holder(tmp_path, capsys):
    """`cache clear` used to delete the lock file of each entry it removed, while holding it. A process
    already waiting on that lock could then lock the deleted file while a third process created and
    locked a new one, and both would build the entry at once (recent filelock releases re-check the
    file after locking; those the project allows, >= 3.12, leave a window). Now the lock file stays.
    Real processes, ordered by files: clear pauses holding the lock of an unfinished entry; a builder
    W waits on it; clear finishes; W builds, paused halfway; a builder H starts. The lock file at the
    path must still be the one W waited on, H must wait for W, and no two builds may overlap."""
    script, root, events = tmp_path / "build.py", tmp_path / "cache", tmp_path / "events.txt"
    script.write_text(BUILDER)
    pauses = {name: tmp_path / f"pause-{name}" for name in ("clear", "w", "h")}
    for folder in pauses.values():
        folder.mkdir()
    entry = cachedir.Entry(root, "images", "k")
    entry.folder.mkdir(parents=True)
    (entry.folder / "data.bin.somehost-1-ab.partial").write_bytes(b"left by a stopped run")  # unfinished: no meta

    clear = start(["-m", "transferkit", "cache", "clear", "--cache-dir", str(root)], tmp_path, pauses["clear"])
    wait_until_building(clear, pauses["clear"], doing="clearing")
    # The lock file W waits on, held open here so that its inode number cannot be reused.
    waited_on = os.open(entry.lock_path, os.O_RDONLY)
    waiter = start([str(script), str(root), "two", str(events)], tmp_path, pauses["w"])
    waiter_err = Lines(waiter)
    waiter_err.wait_for("waiting for another process that is building the test cache")
    (pauses["clear"] / "go").touch()
    out, err = clear.communicate(timeout=120)
    assert clear.returncode == 0 and "removed 1 cache entry" in out, err
    wait_until_building(waiter, pauses["w"])  # W holds the lock now, halfway through its build
    try:  # clear left the lock file in place: the one at the path is still the one W waited on
        assert os.path.samestat(os.fstat(waited_on), os.stat(entry.lock_path))
    finally:
        os.close(waited_on)

    third = start([str(script), str(root), "six", str(events)], tmp_path, pauses["h"])
    third_err = Lines(third)
    deadline = time.monotonic() + 120
    while not list(pauses["h"].glob("building-*")) and not any("waiting for another" in s for s in third_err.seen):
        assert third.poll() is None and time.monotonic() < deadline, third_err.rest()
        try:
            third_err.seen.append(third_err._queue.get(timeout=0.05))
        except queue.Empty:
            pass
    for folder in (pauses["w"], pauses["h"]):
        (folder / "go").touch()
    out_w, _ = waiter.communicate(timeout=120)
    out_h, _ = third.communicate(timeout=120)
    marks = events.read_text().split()
    starts_and_ends = list(zip(marks[0::2], marks[1::2]))
    running = []
    for what, pid in starts_and_ends:  # no build starts while another one is running
        assert what == "end" or not running, f"two builds at once: {starts_and_ends}"
        running = running + [pid] if what == "start" else [p for p in running if p != pid]
    assert waiter.returncode == 0 and third.returncode == 0, waiter_err.rest() + third_err.rest()
    assert out_w.strip() == "built two" and out_h.strip() == "reused two"
    assert main(["cache", "list", "--cache-dir", str(root), "--format", "json"]) == 0
    assert [e["key"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["k"]  # the lock is no entry


CONVERTER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from transferkit.runtimes.store import Entry

    root, payload = Path(sys.argv[1]), sys.argv[2]
    path, made = Entry(root, "k").file("model.onnx", lambda p: p.write_text(payload))
    print("made" if made else "reused", path.read_text())
""")


def test_a_network_is_converted_once_while_a_second_process_waits(tmp_path, capsys):
    first, script, pause, root = paused_builder(tmp_path, CONVERTER)
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0  # skips the entry being made
    assert "skipped" in capsys.readouterr().out and partial_files(root)
    second = start([str(script), str(root), "two"], tmp_path)
    second_err = Lines(second)
    second_err.wait_for("waiting for another process that is building the model.onnx")
    (pause / "go").touch()
    out_first, _ = first.communicate(timeout=120)
    out_second, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, second_err.rest()
    assert out_first.strip() == "made one" and out_second.strip() == "reused one"
    assert partial_files(root) == []


def test_a_conversion_killed_halfway_is_cleaned_up_and_made_again(tmp_path):
    killed, script, pause, root = paused_builder(tmp_path, CONVERTER)
    killed.kill()
    killed.communicate(timeout=60)
    assert partial_files(root)
    again = start([str(script), str(root), "again"], tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert out.strip() == "made again" and partial_files(root) == []
