"""The cache folder: one policy for every cache transferkit writes (cached features, decoded images, converted networks).

Layout: ``ROOT/KIND/KEY/`` is one entry, ``ROOT/KIND/KEY.lock`` its lock. ROOT is ``--cache-dir``
(default: the user cache dir, e.g. ``~/.cache/transferkit``); KIND is ``features``, ``images`` or
``engines`` (``runtimes/store.py``: files added one by one, each under this lock);
KEY is a hash of everything that changes the content. An entry holds its data file and
``meta.json``, which is written last: an entry is complete exactly when its ``meta.json`` names
its key, so a folder without one is unfinished and is never read.

Building an entry (``build``), safe under concurrent runs (a sweep over seeds, two torchrun jobs):
1. Complete already: reuse it, no lock taken.
2. Else take the entry's file lock (``filelock``); a process that has to wait says so, then finds
   the entry complete (another process built it) and reuses it.
3. Holding the lock, anything in the folder is a leftover of a process that stopped (the kernel
   drops a lock when its process dies): it is removed, said so, and the entry is rebuilt.
4. The data goes into a partial file with a name of its own (host, pid, random), then is renamed
   into place; ``meta.json`` follows. A process only ever deletes its own partial file.
5. Disk space: ``create`` makes the data file at its full size, sparse (nothing written yet), so
   before any work the builder compares what the file still needs with the free space of the
   disk under it and stops with one line (how much is needed, how much is free, where, and how
   to move the cache: ``--cache-dir``, ``XDG_CACHE_HOME``). A disk that fills up all the same
   (another program writing) ends the build with the same kind of line, never a traceback from
   a worker process; either way the unfinished entry is removed.
Under torchrun rank 0 takes the lock and creates the partial file, every process fills its share
of the rows, and rank 0 publishes: the work is split, not repeated.

Deleting a cache folder is always safe (``transferkit cache clear`` skips entries being built):
a later run rebuilds what it needs, and a running one keeps reading the files it opened.
``cache clear`` leaves the lock files (empty files) where they are: a process waiting on a lock
holds that file open, and had the file been deleted and made anew by a third process, the
waiter would lock the old file and build alongside the new holder (filelock's documentation
warns against deleting lock files for this reason).
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout
from platformdirs import user_cache_dir

from transferkit.core import distributed as dist
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.core.safeio import write_json_atomic

KINDS = ("features", "images", "engines")  # engines: runtimes/store.py (converted networks)
META = "meta.json"
# Tests set this to a folder: a builder holding a lock then waits for the file "go" in it, so a
# test decides the order of two real processes without sleeping (see tests/test_cachedir.py).
PAUSE_ENV = "TRANSFERKIT_CACHE_TEST_PAUSE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, or the user cache dir (``$XDG_CACHE_HOME/transferkit`` on Linux)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(user_cache_dir("transferkit"))


@dataclass(frozen=True)
class Entry:
    root: Path
    kind: str
    key: str

    @property
    def folder(self) -> Path:
        return self.root / self.kind / self.key

    @property
    def lock_path(self) -> Path:
        return self.root / self.kind / f"{self.key}.lock"

    def meta(self) -> dict | None:
        """The published ``meta.json`` (it names this key), or None for a missing or unfinished entry."""
        try:
            meta = json.loads((self.folder / META).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == self.key else None

    def data_path(self, meta: dict) -> Path:
        return self.folder / meta["data"]


def _together() -> bool:
    """Whether the processes build together (torchrun, process group joined); else each is on its own."""
    return dist.active()


def share(n: int) -> tuple[int, int]:
    """This process's contiguous rows of an ``n``-row entry built together (torch.tensor_split's split)."""
    world, rank = (dist.world(), dist.rank()) if _together() else (1, 0)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _usable(entry: Entry, complete: Callable[[dict, Path], bool]) -> dict | None:
    meta = entry.meta()
    try:
        return meta if meta is not None and entry.data_path(meta).is_file() and complete(meta, entry.data_path(meta)) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def locked(entry: Entry, what: str, blocking: bool = True):
    """Hold the entry's lock; yields False (lock not taken) only when ``blocking`` is False and it is busy."""
    entry.lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry.lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not blocking:
            yield False
            return
        log(f"waiting for another process that is building the {what} in {entry.folder}")
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def _remove_leftovers(entry: Entry) -> None:
    """Called with the lock held: whatever is in the folder was left by a process that stopped."""
    if not entry.folder.exists():
        return
    partial = sorted(p.name for p in entry.folder.glob("*.partial"))
    if partial:
        log(f"rebuilding {entry.folder}: a process stopped while writing it (left {partial[0]})")
    shutil.rmtree(entry.folder)


def pause_for_tests(entry: Entry, doing: str = "building") -> None:
    """Called holding the entry's lock: by a builder (here and in runtimes/store.py), and by ``cache clear``."""
    folder = os.environ.get(PAUSE_ENV)
    if not folder:
        return
    Path(folder, f"{doing}-{entry.kind}-{os.getpid()}").write_text(str(entry.folder))
    while not Path(folder, "go").exists():
        time.sleep(0.01)  # polling only: the test, not this delay, decides what happens first


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n:,} bytes"


def _move_it(entry: Entry) -> str:
    return (f"free some space there, or put the cache on a disk with room: --cache-dir DIR, or set XDG_CACHE_HOME "
            f"(the cache folder is {entry.root}; by default $XDG_CACHE_HOME/transferkit, ~/.cache/transferkit when "
            "XDG_CACHE_HOME is unset)")


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _check_room(entry: Entry, partial: Path, what: str) -> int:
    """Bytes the sparse data file still needs; a UserError when the disk under it has less free."""
    stat = partial.stat()
    needed = max(0, stat.st_size - stat.st_blocks * 512)
    free = shutil.disk_usage(partial.parent).free
    if needed > free:
        raise UserError(f"not enough disk space for the {what}: it needs {_gb(needed)} in {entry.folder.parent}, and "
                        f"{_gb(free)} are free there; {_move_it(entry)}")
    return needed


def _failed(exc: BaseException, entry: Entry, what: str, needed: int) -> str | None:
    """The one line for a build that stopped on a user-level problem (a full disk mid-build, a UserError
    raised by ``fill``), or None for a bug (its traceback is kept)."""
    if isinstance(exc, UserError):
        return str(exc)
    if disk_full(exc):
        size = f"; it needs {_gb(needed)}" if needed else ""
        return (f"the disk filled up while the {what} was being written in {entry.folder.parent} "
                f"({exc.strerror or exc}{size}); the unfinished entry was removed: {_move_it(entry)}")
    return None


def _drop_unfinished(entry: Entry, partial: Path) -> None:
    """On leaving ``build`` (lock held): our partial file goes, and so does the entry's folder if it was
    never published, so a failed build leaves nothing behind."""
    partial.unlink(missing_ok=True)  # gone already once renamed into place
    if entry.meta() is None:
        shutil.rmtree(entry.folder, ignore_errors=True)


def build(entry: Entry, data_name: str, *, complete: Callable[[dict, Path], bool], create: Callable[[Path], Any],
          fill: Callable[[Path, Any], Any], finish: Callable[[Any, list], dict], what: str) -> tuple[dict, bool]:
    """The entry's meta, after building the entry unless it is complete; True when this call built it.

    - ``complete(meta, data_path)``: whether a published entry is usable;
    - ``create(partial_path) -> info`` (rank 0, lock held): allocate the data file at its full size, sparse
      (``truncate``): its size is what the free-space check compares; ``info`` goes to every process;
    - ``fill(partial_path, info) -> share`` (every process): write this process's rows, on disk before it returns;
    - ``finish(info, shares) -> dict`` (rank 0): the meta fields, from every process's ``share``.
    A full disk, or a UserError from ``create``/``fill`` on any process, stops every process with one line.
    """
    meta = _usable(entry, complete)
    if dist.all_true(meta is not None):
        return meta, False
    with ExitStack() as stack:
        plan, partial = ("reuse",), None
        main = dist.is_main() or not _together()
        if main:
            stack.enter_context(locked(entry, what))
            if _usable(entry, complete) is None:
                _remove_leftovers(entry)
                entry.folder.mkdir(parents=True, exist_ok=True)
                partial = entry.folder / f"{data_name}.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.partial"
                stack.callback(_drop_unfinished, entry, partial)  # the partial file is ours alone
                try:
                    info = create(partial)
                    plan = ("build", str(partial), info, _check_room(entry, partial, what))
                except (UserError, OSError) as exc:
                    if (line := _failed(exc, entry, what, 0)) is None:
                        raise
                    plan = ("failed", line)
                if plan[0] == "build":
                    pause_for_tests(entry)
        plan = dist.broadcast_object(plan)
        if plan[0] == "failed":
            raise UserError(plan[1])
        if plan[0] == "reuse":  # built by another process while this one waited
            meta = _usable(entry, complete)
            if not dist.all_true(meta is not None):
                raise UserError(f"the cache entry {entry.folder} is not readable by every process; on several machines "
                                "give --cache-dir a folder on a filesystem that all of them share")
            return meta, False
        partial = Path(plan[1])
        if not dist.all_true(partial.is_file()):
            raise UserError(f"the cache {entry.folder} is not visible to every process; on several machines give "
                            "--cache-dir a folder on a filesystem that all of them share, or turn the cache off")
        try:
            mine = ("done", fill(partial, plan[2]))
        except (UserError, OSError) as exc:  # said on every process, so none waits for the others forever
            if (line := _failed(exc, entry, what, plan[3])) is None:
                raise
            mine = ("failed", line)
        shares = dist.all_gather_objects(mine)
        if lines := [share[1] for share in shares if share[0] == "failed"]:
            raise UserError(lines[0])
        shares = [share[1] for share in shares]
        meta = None
        if main:
            meta = {"key": entry.key, "kind": entry.kind, "data": data_name, "created": time.time(),
                    **finish(plan[2], shares)}
            try:
                partial.replace(entry.folder / data_name)
                write_json_atomic(entry.folder / META, meta)  # last: the entry is complete from here on
            except OSError as exc:
                if (line := _failed(exc, entry, what, plan[3])) is None:
                    raise
                raise UserError(line) from None
        dist.barrier()
        return dist.broadcast_object(meta), True


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512  # space used, sparse files too
            except OSError:
                pass
    return total


def list_entries(root: Path, kinds=KINDS) -> list[dict]:
    """Every entry folder under ``root``: kind, key, bytes, complete, and its meta's summary
    (lock files are not entries)."""
    out = []
    for kind in kinds:
        base = root / kind
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            entry = Entry(root, kind, folder.name)
            meta = entry.meta()
            out.append({"kind": kind, "key": folder.name, "path": str(folder), "bytes": folder_bytes(folder),
                        "complete": meta is not None, "about": (meta or {}).get("about", ""),
                        "created": (meta or {}).get("created")})
    return out


def clear_entries(root: Path, kinds=KINDS) -> tuple[int, int, list[str]]:
    """Remove every entry not being built right now: (entries removed, bytes freed, folders skipped).

    Each entry goes while its lock is held, so no builder is inside it; the lock file stays (see
    the module's docstring): a process already waiting on it then builds the entry anew, alone.
    """
    removed, freed, busy = 0, 0, []
    for item in list_entries(root, kinds):
        entry = Entry(root, item["kind"], item["key"])
        with locked(entry, "cache", blocking=False) as mine:
            if not mine:
                busy.append(item["path"])
                continue
            pause_for_tests(entry, "clearing")
            shutil.rmtree(entry.folder, ignore_errors=True)
        removed, freed = removed + 1, freed + item["bytes"]
    return removed, freed, busy
