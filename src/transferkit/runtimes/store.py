"""Converted models on disk: one cache entry per frozen network, beside the feature cache.

An entry is ``CACHE_DIR/engines/KEY/`` (the ONNX file, quantized variants, OpenVINO's compiled
blobs); KEY hashes everything the conversion depends on (the network's own tensors and layers,
the input size, the library versions). Entries follow the cache folder's rules: a file is
written under a name of its own and renamed into place, and ``meta.json``, written last, lists
the files with their sizes and hashes; a file missing from it, or that no longer matches it,
is stale and made again. A file is made holding the entry's lock (``core/cachedir``): a second
process that needs it waits, says so, and uses the finished file instead of converting again;
``transferkit cache clear`` skips an entry being made; and a private folder left by a process
that died while converting is removed by the next one. Deleting the folder is always safe.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from transferkit.core import cachedir
from transferkit.core.safeio import sha256_file, write_json_atomic

KIND = "engines"  # one of cachedir.KINDS
META = "meta.json"


class Entry:
    """``CACHE_DIR/engines/KEY``: named files, each made once and checked on every use."""

    def __init__(self, root: Path, key: str, about: str = ""):
        self.root, self.key, self.about = Path(root), key, about
        self.lockable = cachedir.Entry(self.root, KIND, key)
        self.folder = self.lockable.folder

    def _meta(self) -> dict:
        try:
            meta = json.loads((self.folder / META).read_text())
        except (OSError, ValueError):
            return {"key": self.key, "files": {}}
        return meta if isinstance(meta, dict) and meta.get("key") == self.key else {"key": self.key, "files": {}}

    def current(self, name: str) -> Path | None:
        """The file ``name`` when it is complete and unchanged since it was made, else None."""
        record = self._meta().get("files", {}).get(name)
        path = self.folder / name
        if not record or not path.is_file():
            return None
        parts = [path, *(self.folder / extra for extra in record.get("with", []))]
        try:
            if any(sha256_file(p) != record["sha256"].get(p.name) for p in parts):
                return None
        except (OSError, AttributeError, KeyError):
            return None
        return path

    def file(self, name: str, make: Callable[[Path], None], companions: tuple[str, ...] = ()) -> tuple[Path, bool]:
        """``(path, made)``: the entry's file ``name``, made by ``make(path)`` unless current.

        ``make`` writes into a private folder; the file (and ``companions``, such as an IR's
        ``.bin``) are renamed into the entry, then recorded in ``meta.json``.
        """
        if (path := self.current(name)) is not None:
            return path, False
        with cachedir.locked(self.lockable, f"{name} (a converted network)"):
            if (path := self.current(name)) is not None:  # made by the process this one waited for
                return path, False
            self.folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.folder.glob(".*.partial"):  # only a lock holder writes these: a dead one's
                shutil.rmtree(leftover, ignore_errors=True)
            work = self.folder / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
            work.mkdir()
            try:
                cachedir.pause_for_tests(self.lockable)
                make(work / name)
                hashes = {n: sha256_file(work / n) for n in (name, *companions)}
                for n in (*companions, name):
                    os.replace(work / n, self.folder / n)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            meta = self._meta()  # read, changed and written under the lock: no record is lost
            meta.setdefault("files", {})[name] = {"sha256": hashes, "with": list(companions)}
            meta["about"] = self.about or meta.get("about", "")
            write_json_atomic(self.folder / META, meta)
        return self.folder / name, True

    def subfolder(self, name: str) -> Path:
        """A folder inside the entry that a runtime manages itself (OpenVINO's compiled-blob cache)."""
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path
