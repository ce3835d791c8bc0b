"""Dynamic batching: concurrent requests gathered into one model call, with a bounded queue.

`submit(item)` waits for its result; items are run together once `max_batch` are waiting or `max_wait_ms`
after the first one arrived, whichever comes first. The model call runs in a worker thread (ONNX Runtime
releases the GIL). When `max_queue` items are already waiting, `submit` raises QueueFull at once.
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


class Batcher(Generic[T, R]):
    def __init__(self, run_batch: Callable[[list[T]], list[R]], *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256, executor: concurrent.futures.Executor | None = None) -> None:
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._executor = executor
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue[tuple[T, asyncio.Future[R]]]:
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        return self._queue

    async def submit(self, item: T) -> R:
        queue = self._ensure_started()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            queue.put_nowait((item, future))
        except asyncio.QueueFull as exc:
            self.stats.rejected += 1
            raise QueueFull(f"{self.max_queue} items are already waiting") from exc
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
            except Exception as exc:  # every caller gets the batch's failure
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(QueueFull("the batcher is shutting down"))
            self._queue = None
