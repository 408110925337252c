"""A small dynamic batcher: concurrent requests share one forward pass.

A CNN on a CPU runs a batch of 8 in far less than 8 times the time of one, so under load the
server answers more requests per second by waiting a few milliseconds for company. Requests wait
in an asyncio queue; one loop takes the first, collects more until ``max_batch`` or ``max_wait``
seconds, and runs ``fn`` on the whole batch in a worker thread (the event loop keeps accepting
and decoding meanwhile; the next batch gathers while this one computes). A request whose caller
gave up (deadline passed, client gone) is dropped before it costs a forward pass.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class DynamicBatcher:
    """``await batcher.submit(item)`` -> ``fn([items...])[i]``, batched with other callers."""

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 16,
                 max_wait: float = 0.005, max_queue: int = 256):
        if max_batch < 1 or max_wait < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait >= 0")
        self.fn, self.max_batch, self.max_wait, self.max_queue = fn, max_batch, max_wait, max_queue
        self.batches = 0  # forward passes run, and the items in them: for /healthz and tests
        self.items = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # One thread: forward passes run one after another, each using every core itself.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-batch")

    @property
    def waiting(self) -> int:
        """Requests queued for a forward pass that has not started yet."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.create_task(self._run(), name="transferkit-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, item: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.max_queue} requests already waiting") from None
        return await future

    async def _collect(self) -> list:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # whatever is already waiting joins at once: no timer needed under load
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            # Not asyncio.wait_for: before Python 3.12 it can drop an item that arrives as it times out.
            getter = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait({getter}, timeout=left)
            if not done:
                getter.cancel()
                try:
                    batch.append(await getter)  # it may have got an item just before the cancel landed
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if getattr(current, "cancelling", lambda: 0)():
                        raise  # the batcher itself is stopping, not just our timed-out get
                break
            batch.append(getter.result())
        return [(item, fut) for item, fut in batch if not fut.done()]  # done = cancelled by its caller

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as exc:  # one bad batch fails its requests, never the loop
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
