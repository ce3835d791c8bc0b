"""Decoding untrusted media in a few worker processes that can be stopped: hard CPU-time, memory and wall limits.

A decoder handed hostile bytes can burn minutes of CPU or gigabytes of memory (a 9 KB GIF of 400 frames on
a 7999x7999 canvas takes 75 s). :mod:`inference.media` refuses what its headers show to be over budget
before decoding; what slips past is stopped here. Each worker process

- runs under RLIMIT_AS (its address space at start plus ``memory_bytes``): an allocation past it fails
  (MemoryError, reported as undecodable) or the process dies;
- gets RLIMIT_CPU set to its CPU time so far plus ``cpu_seconds`` before each task: past it the kernel
  kills the process (SIGXCPU);
- is killed by the pool when a task runs longer than ``wall_seconds``, and replaced.

A task stopped in any of these ways raises :class:`DecodeLimitExceeded`: for the caller these bytes are
undecodable (the policy's `on_undecodable`), never "the detectors are unavailable". Processes, not threads:
a thread cannot be stopped and would keep burning after its caller gave up. Workers are started with
`spawn`, so they share nothing with a threaded parent (uvicorn, ONNX Runtime).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar

from inference.decode_worker import serve

T = TypeVar("T")
log = logging.getLogger("bucketguard.decode")

class DecodeBusy(Exception):
    """Every worker is busy and the queue in front of them is full: an overload, not a property of the bytes."""


class DecodeLimitExceeded(Exception):
    """The decode of these bytes was stopped at a hard limit: they are undecodable."""

    def __init__(self, message: str, *, wall_clock: bool = False) -> None:
        super().__init__(message)
        self.wall_clock = wall_clock  # stopped by the wall deadline (which a loaded machine reaches sooner)


@dataclass(frozen=True)
class DecodeLimits:
    cpu_seconds: int = 10
    wall_seconds: float = 15.0
    memory_bytes: int = 1536 * 1024 * 1024
    #: a worker is replaced after this many tasks (memory fragmentation of long-lived decoders). A replacement
    #: costs a fresh interpreter (~0.5-1.5 s of CPU on a busy 2-core box, the parent's main module imported
    #: again), during which the pool is short of a worker: at 500 a backfill lost about half its rate to it.
    #: RLIMIT_AS bounds every worker whatever this is.
    max_tasks: int = 2000
    #: tasks allowed to wait for a worker; one more raises DecodeBusy at once (bounded queue and waits)
    max_waiting: int = 64


class WorkerDied(Exception):
    """The worker running a task died (killed at its CPU-time limit, or at its memory cap)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"the decode worker died (exit code {exitcode})")
        self.exitcode = exitcode


class _Future(concurrent.futures.Future[Any]):
    """A task's future; cancelling it while it runs kills the worker running it (the task may be burning CPU on
    hostile bytes; nothing else would stop it)."""

    def __init__(self, kill: Callable[[], None]) -> None:
        super().__init__()
        self._kill = kill

    def cancel(self) -> bool:
        with self._condition:  # type: ignore[attr-defined]
            running = self._state == _RUNNING  # type: ignore[attr-defined]
            if running:
                self._state = _PENDING  # type: ignore[attr-defined]  # so that the base class may cancel it
        cancelled = super().cancel()
        if running and cancelled:
            self._kill()
        return cancelled


@dataclass(eq=False)
class _Task:
    payload: bytes
    future: _Future
    deadline: float = 0.0


class _Worker:
    """One decode process and the parent's end of its own pipe."""

    def __init__(self, context: Any, memory_bytes: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, memory_bytes), daemon=True)
        self.process.start()
        child.close()
        self.tasks = 0
        self.task: _Task | None = None
        self.killed = False  # by a caller that gave up: never given another task

    def kill(self) -> None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            self.process.kill()

    def retire(self) -> None:
        """Closed, killed and reaped: never left as a zombie."""
        self.kill()
        self.process.join(timeout=5)
        self.conn.close()


def _settle(future: concurrent.futures.Future[Any], ok: bool, value: Any) -> None:
    """Give a task its outcome unless it already has one (cancelled by its caller)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class DecodePool:
    """A lazily started pool of decode processes; `run` and `call` are safe from any thread or event loop.

    Each worker has its own pipe. A task sent to an idle worker is written by the caller itself (no thread between
    the caller and the worker; a body over the pipe's buffer goes through a sender thread so that an event loop
    never blocks on it); one collector thread waits on every worker's pipe and process at once, hands results
    back, enforces the wall deadline, replaces dead, killed and worn-out workers and sends waiting tasks on.
    (pebble's pool, used before, passed every task through two more threads: ~0.1-0.3 ms per task.)"""

    #: a request up to this size is written by the caller (an idle worker's pipe buffer takes it at once)
    INLINE_BYTES = 64 * 1024

    def __init__(self, workers: int = 2, limits: DecodeLimits | None = None) -> None:
        self.workers = max(1, workers)
        self.limits = limits or DecodeLimits()
        self.stopped = 0  # tasks stopped at a limit (the worker was killed or hit its memory cap)
        self.in_flight = 0  # tasks running or waiting
        self.submitted = 0  # tasks accepted since start (each one round trip to a worker)
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("spawn")
        self._running: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._waiting: collections.deque[_Task] = collections.deque()
        self._collector: threading.Thread | None = None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._wake_r, self._wake_w = -1, -1

    # -- the caller's side ------------------------------------------------------------------------------------

    def _start(self) -> None:
        """Called with the lock held: workers, the collector and its wake-up pipe."""
        if self._collector is not None:
            return
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._running = [_Worker(self._context, self.limits.memory_bytes) for _ in range(self.workers)]
        self._idle = []  # each joins when it says it is ready
        self._sender = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-send")
        self._collector = threading.Thread(target=self._collect, name="decode-collector", daemon=True)
        self._collector.start()

    def submit(self, function: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Schedule `function(*args)` (a module-level function, picklable arguments) in a worker; DecodeBusy
        when `workers + max_waiting` tasks are already in flight."""
        task = _Task(ForkingPickler.dumps((function, args, self.limits.cpu_seconds)), _Future(lambda: None))
        task.future._kill = lambda: self._kill_running(task)
        with self._lock:
            if self.in_flight >= self.workers + self.limits.max_waiting:
                raise DecodeBusy(f"{self.in_flight} decodes are already running or waiting")
            self._start()
            self.in_flight += 1
            self.submitted += 1
            worker = self._idle.pop() if self._idle and not self._waiting else None
            if worker is None:
                self._waiting.append(task)
            else:
                self._assign(worker, task)
        task.future.add_done_callback(self._finished)
        if worker is not None:
            self._send(worker, task, inline=True)
        return task.future  # type: ignore[return-value]

    def _assign(self, worker: _Worker, task: _Task) -> bool:
        """With the lock held: the task runs on this worker from now (its wall deadline counts from here), unless
        its caller has cancelled it."""
        if not task.future.set_running_or_notify_cancel():
            return False
        task.deadline = time.monotonic() + self.limits.wall_seconds
        worker.task = task
        return True

    def _send(self, worker: _Worker, task: _Task, *, inline: bool) -> None:
        if inline and len(task.payload) > self.INLINE_BYTES:
            assert self._sender is not None
            self._sender.submit(self._send, worker, task, inline=False)
            return
        with contextlib.suppress(OSError, ValueError):  # the worker is gone: the collector says why, and replaces it
            worker.conn.send_bytes(task.payload)
        task.payload = b""

    def _finished(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.in_flight -= 1

    def _kill_running(self, task: _Task) -> None:
        """A running task was cancelled by its caller: its worker is killed (the collector replaces it)."""
        with self._lock:
            worker = next((w for w in self._running if w.task is task), None)
            if worker is not None:
                worker.killed = True
                worker.kill()

    # -- the collector thread ---------------------------------------------------------------------------------

    def _collect(self) -> None:
        try:
            self._collecting()
        except Exception:  # never a pool whose tasks wait forever: they fail, and the next task starts a new one
            log.exception("the decode pool's collector failed; the pool is closed")
            self.close()

    def _collecting(self) -> None:
        while True:
            with self._lock:
                if self._collector is not threading.current_thread():
                    return  # closed
                workers = list(self._running)
            now = time.monotonic()
            deadlines = [w.task.deadline for w in workers if w.task is not None]
            timeout = max(0.0, min([*deadlines, now + min(self.limits.wall_seconds, 0.1)]) - now)
            ready = set(wait([self._wake_r, *(w.conn for w in workers), *(w.process.sentinel for w in workers)],
                             timeout))
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            now = time.monotonic()
            for worker in workers:
                if worker.conn in ready:
                    self._receive(worker, now)
                elif worker.process.sentinel in ready:
                    self._replace(worker, WorkerDied(worker.process.exitcode))
                elif worker.task is not None and worker.task.deadline <= now:
                    self._replace(worker, TimeoutError())

    def _receive(self, worker: _Worker, now: float) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)
            self._replace(worker, WorkerDied(worker.process.exitcode))
            return
        except Exception as exc:  # a reply that does not unpickle here: that task fails, its worker is replaced
            self._replace(worker, exc)
            return
        with self._lock:
            task, worker.task = worker.task, None
            usable = not worker.killed
        if message is None and usable:  # started: ready for its first task
            with self._lock:
                self._idle.append(worker)
            self._send_waiting()
            return
        worker.tasks += 1
        if task is not None and message is not None:
            ok, value = message
            late = task.deadline < now  # finished, but past its wall deadline: stopped, as if killed in time
            _settle(task.future, ok and not late, TimeoutError() if late else value)
        if worker.tasks >= self.limits.max_tasks or not usable:
            self._replace(worker, None)
        else:
            with self._lock:
                self._idle.append(worker)
            self._send_waiting()

    def _replace(self, worker: _Worker, error: BaseException | None) -> None:
        """A worker died, ran past its deadline or wore out: it goes, a fresh one takes its place."""
        task, worker.task = worker.task, None
        if task is not None and error is not None:
            _settle(task.future, False, error)
        worker.retire()
        with self._lock:
            if self._collector is not threading.current_thread() or worker not in self._running:
                return
            self._running.remove(worker)
        fresh = _Worker(self._context, self.limits.memory_bytes)
        with self._lock:
            self._running.append(fresh)

    def _send_waiting(self) -> None:
        while True:
            with self._lock:
                if not self._idle or not self._waiting:
                    return
                task = self._waiting.popleft()
                worker = self._idle[-1]
                if not self._assign(worker, task):
                    continue
                self._idle.pop()
            assert self._sender is not None
            self._sender.submit(self._send, worker, task, inline=False)

    # -- results ----------------------------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> DecodeLimitExceeded | None:
        if isinstance(exc, TimeoutError):
            self.stopped += 1
            return DecodeLimitExceeded(f"decoding took longer than {self.limits.wall_seconds:g} s and was stopped",
                                       wall_clock=True)
        if isinstance(exc, WorkerDied):
            self.stopped += 1
            return DecodeLimitExceeded(f"the decoder was stopped at its CPU-time ({self.limits.cpu_seconds} s) or "
                                       f"memory ({self.limits.memory_bytes // 2**20} MiB) limit "
                                       f"(exit code {exc.exitcode})")
        if isinstance(exc, MemoryError):
            self.stopped += 1
            return DecodeLimitExceeded(f"decoding needed more than {self.limits.memory_bytes // 2**20} MiB")
        return None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker; DecodeLimitExceeded when it was stopped at a limit."""
        future = self.submit(function, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a running task's worker is killed
            raise
        except (TimeoutError, WorkerDied, MemoryError) as exc:
            raise self._translate(exc) from exc  # type: ignore[misc]

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """The same as `run`, for synchronous callers (blocks the calling thread)."""
        future = self.submit(function, *args)
        try:
            return future.result()
        except (TimeoutError, WorkerDied, MemoryError) as exc:
            raise self._translate(exc) from exc  # type: ignore[misc]

    def close(self) -> None:
        """Kill the workers; tasks still running or waiting fail. A later submit starts the pool afresh."""
        with self._lock:
            collector, self._collector = self._collector, None
            workers, self._running, self._idle = self._running, [], []
            waiting, self._waiting = list(self._waiting), collections.deque()
            sender, self._sender = self._sender, None
            wake_r, wake_w = self._wake_r, self._wake_w
        if collector is None:
            return
        with contextlib.suppress(OSError):
            os.write(wake_w, b"x")
        if collector is not threading.current_thread():
            collector.join(timeout=5)
        closed = RuntimeError("the decode pool was closed")
        for worker in workers:
            task, worker.task = worker.task, None
            worker.retire()
            if task is not None:
                _settle(task.future, False, closed)
        for task in waiting:
            _settle(task.future, False, closed)
        if sender is not None:
            sender.shutdown(wait=False, cancel_futures=True)
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


_shared: DecodePool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> DecodePool:
    """The process's pool for the proxy's own decoding (PDQ hashing): min(4, CPUs) workers."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodePool(workers=min(4, os.cpu_count() or 2))
            atexit.register(_shared.close)  # no replacement worker is started while the interpreter exits
        return _shared
