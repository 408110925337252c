"""Progress bars on a terminal, plain log lines otherwise (or with --quiet).

Under torchrun only rank 0 reports: the other processes would repeat (or interleave) the same
lines, so their progress and log lines go nowhere. Errors still reach everyone's stderr.
"""
from __future__ import annotations

import sys
import time

from transferkit.core.distributed import is_main


class PlainProgress:
    """tqdm's interface, printing one line at the end (and every 30 s) instead of a bar."""

    def __init__(self, total=None, desc="", unit="it", initial=0, **_):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.start = self.last = time.perf_counter()
        self.postfix = ""

    def update(self, k=1):
        self.n += k
        if time.perf_counter() - self.last > 30:
            self.last = time.perf_counter()
            self._print()

    def set_postfix(self, **values):
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _print(self):
        secs = time.perf_counter() - self.start
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} in {secs:.1f}s {self.postfix}".rstrip(),
              file=sys.stderr, flush=True)

    def close(self):
        self._print()


class SilentProgress(PlainProgress):
    def _print(self):
        pass


def make_progress(quiet: bool = False):
    """A factory with tqdm's signature: tqdm on an interactive stderr, plain lines otherwise."""
    if quiet or not sys.stderr.isatty() or not is_main():
        kind = PlainProgress if is_main() else SilentProgress

        def plain(iterable=None, **kwargs):
            bar = kind(**kwargs)
            if iterable is None:
                return bar
            def run():
                for item in iterable:
                    yield item
                    bar.update(1)
                bar.close()
            return run()
        return plain
    from tqdm import tqdm

    return lambda iterable=None, **kw: tqdm(iterable, leave=False, dynamic_ncols=True, **kw)


def log(message: str) -> None:
    if is_main():
        print(message, file=sys.stderr, flush=True)
