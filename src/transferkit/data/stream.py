"""Batches read ahead in a background thread, through a bounded queue.

Reading a batch of decoded images from the disk cache (``pread``, which releases the GIL) then
overlaps the previous step's compute, and at most ``depth`` batches wait in memory whatever
the size of the data set. On CUDA each batch is copied into pinned (page-locked) memory here, so
the training step's ``.to(device, non_blocking=True)`` is an asynchronous copy that overlaps
the GPU's work on the batch before it.

A thread, not worker processes: the work per batch is a few reads into one buffer, and a thread
shares the open cache file and needs no copy of the batch between processes. Its order is the
order of the iterator it drains, so data order (and exact resume) is unchanged.
"""
from __future__ import annotations

import queue
import threading

import torch

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _pinned(item, pin: bool):
    if not pin:
        return item
    return tuple(x.pin_memory() if isinstance(x, torch.Tensor) and x.device.type == "cpu" else x for x in item)


def prefetched(items, depth: int = 4, pin_memory: bool = False):
    """Yield what ``items`` yields (tuples), produced up to ``depth`` items ahead by a background thread."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(_pinned(item, pin_memory)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name="transferkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = slots.get()
            if value is _DONE:
                return
            if isinstance(value, _Failed):
                raise value.exc
            yield value
    finally:
        # The consumer stopped early (an interrupt, lr-find's last step) or finished: end the thread.
        stop.set()
        while thread.is_alive():
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
