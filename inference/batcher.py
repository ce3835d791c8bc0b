"""Dynamic batching: concurrent requests gathered into model calls, with a bounded queue.

`submit(item)` waits for its result. When a worker is free, it takes the items already waiting (up to
`max_batch`); a batch still short of `max_batch` waits until `max_wait_ms` after its first item ARRIVED,
so an item that already waited that long (the usual case under load) runs at once: the window never idles
a core that has queued work. Up to `workers` batches run at once, each in a thread of `executor` (ONNX
Runtime releases the GIL): on a CPU, one single-threaded batch per core keeps every core computing, where
one batch on a multi-threaded session leaves cores waiting at each operator's join. When `max_queue`
items are already waiting, `submit` raises QueueFull at once. A failed batch fails each of its callers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The batcher's queue is full: answer 503 and let the client retry."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    rejected: int = 0

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


_Entry = tuple[float, T, "asyncio.Future[R]"]  # (arrival on the loop's clock, item, its caller's future)


class Batcher(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], list[R]], *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256, executor: concurrent.futures.Executor | None = None,
                 workers: int = 1) -> None:
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.workers = max(1, workers)
        self._executor = executor
        self._queue: asyncio.Queue[_Entry[T, R]] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Future[R]] = set()
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue[_Entry[T, R]]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._slots = asyncio.Semaphore(self.workers)
            self._collector = asyncio.get_running_loop().create_task(self._collect())
        return self._queue

    async def submit(self, item: T) -> R:
        queue = self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        try:
            queue.put_nowait((loop.time(), item, future))
        except asyncio.QueueFull as exc:
            self.stats.rejected += 1
            raise QueueFull(f"{self.max_queue} items are already waiting") from exc
        return await future

    async def _collect(self) -> None:
        """Form batches as workers free up; each batch runs in its own task, at most `workers` at once."""
        assert self._queue is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch(loop)
            except BaseException:
                self._slots.release()
                raise
            live = [(item, future) for _, item, future in batch if not future.cancelled()]
            if not live:
                self._slots.release()
                continue
            task = loop.create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Entry[T, R]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = batch[0][0] + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        assert self._slots is not None
        futures = [future for _, future in live]
        self._in_flight.update(futures)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
        except Exception as exc:  # every caller gets the batch's failure
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._in_flight.difference_update(futures)
            self._slots.release()
        self.stats.batches += 1
        self.stats.items += len(live)
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop taking work; every caller still waiting (queued or in a running batch) gets QueueFull."""
        waiting = list(self._in_flight)
        tasks = [task for task in (self._collector, *self._running) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._collector = None
        if self._queue is not None:
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait()[2])
            self._queue = None
        for future in waiting:
            if not future.done():
                future.set_exception(QueueFull("the batcher is shutting down"))
        self._in_flight.clear()
