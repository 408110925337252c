"""At most N uploaded images decoded at once: what bounds the server's memory for big images.

Decoding holds the whole image in memory, several copies of it on the way to RGB (measured with
``load_uint8``: about 9 bytes per pixel for 8-bit JPEG/PNG, 29 for 16-bit PNG, whose values pass
through float64), so a 50-megapixel upload costs 0.45 to 1.45 GB while it decodes. Run in a
shared thread pool, as many decode at once as the pool has threads (40 in Starlette's): tens of
GB. Here decoding has its own pool of ``size`` threads, so no more than ``size`` images are ever
being decoded, by construction; the others wait with only their encoded bytes (at most
``--max-bytes`` each). A request that gives up while waiting is dropped before it decodes.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

DEFAULT_MAX = 4  # ~4 x 12 MP photos per 0.15 s: more than a CPU model classifies, and 4 x 1.45 GB at worst


def default_size(workers: int = 1) -> int:
    """Decodes at once for one server process: its share of the cores, at most DEFAULT_MAX."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(DEFAULT_MAX, cores // max(1, workers)))


class DecodePool:
    """``await pool.run(decode, *args)`` -> ``decode(*args)`` in one of ``size`` threads."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("a decode pool needs at least one thread")
        self.size = size
        self.waiting = 0  # requests whose image no thread has started on (for /healthz and tests)
        self.running = 0  # images being decoded now: never more than size
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="transferkit-decode")

    async def run(self, decode: Callable[..., Any], *args) -> Any:
        job = {"started": False, "abandoned": False}

        def work():
            with self._lock:
                if job["abandoned"]:  # the request left before a thread was free: nothing to decode
                    return None
                job["started"] = True
                self.waiting, self.running = self.waiting - 1, self.running + 1
            try:
                return decode(*args)
            finally:
                with self._lock:
                    self.running -= 1

        with self._lock:
            self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            with self._lock:  # one of the two sides takes the request off the waiting count
                if not job["started"]:
                    job["abandoned"] = True
                    self.waiting -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
