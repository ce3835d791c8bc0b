"""Decoding untrusted media in a few worker processes that can be stopped: hard CPU-time, memory and wall limits.

A decoder handed hostile bytes can burn minutes of CPU or gigabytes of memory (a 9 KB GIF of 400 frames on
a 7999x7999 canvas takes 75 s). :mod:`inference.media` refuses what its headers show to be over budget
before decoding; what slips past is stopped here. Each worker process

- runs under RLIMIT_AS (its address space at start plus ``memory_bytes``): an allocation past it fails
  (MemoryError, reported as undecodable) or the process dies;
- gets RLIMIT_CPU set to its CPU time so far plus ``cpu_seconds`` before each task: past it the kernel
  kills the process (SIGXCPU);
- is killed by the pool when a task runs longer than ``wall_seconds`` (pebble), and replaced.

A task stopped in any of these ways raises :class:`DecodeLimitExceeded`: for the caller these bytes are
undecodable (the policy's `on_undecodable`), never "the detectors are unavailable". Processes, not threads:
a thread cannot be stopped and would keep burning after its caller gave up. Workers are started with
`spawn`, so they share nothing with a threaded parent (uvicorn, ONNX Runtime).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pebble

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


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


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _die_with_parent() -> None:
    """Linux: a decode worker is killed when the process that started it dies (a kill -9 of `serve` would
    otherwise leave orphans burning CPU on a bomb)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above ran
            os._exit(1)


def _start_worker(memory_bytes: int) -> None:
    """Import the decoders first (their libraries count in the address space), then cap it."""
    _die_with_parent()
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401

    with contextlib.suppress(ImportError):
        import av  # type: ignore[import-not-found]  # noqa: F401
    limit = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_limited(function: Callable[..., T], args: tuple[Any, ...], cpu_seconds: int) -> T:
    """One task in a worker: its CPU-time limit counts from now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + cpu_seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    return function(*args)


class DecodePool:
    """A lazily started pool of decode processes; `run` and `call` are safe from any thread or event loop."""

    def __init__(self, workers: int = 2, limits: DecodeLimits | None = None) -> None:
        self.workers = max(1, workers)
        self.limits = limits or DecodeLimits()
        self.stopped = 0  # tasks stopped at a limit (the worker was killed or hit its memory cap)
        self.in_flight = 0  # tasks running or waiting
        self.submitted = 0  # tasks accepted since start (each one round trip to a worker)
        self._pool: pebble.ProcessPool | None = None
        self._lock = threading.Lock()

    def _started(self) -> pebble.ProcessPool:
        with self._lock:
            if self._pool is None or not self._pool.active:
                self._pool = pebble.ProcessPool(
                    max_workers=self.workers, max_tasks=self.limits.max_tasks, initializer=_start_worker,
                    initargs=(self.limits.memory_bytes,), context=multiprocessing.get_context("spawn"))
            return self._pool

    def submit(self, function: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Schedule `function(*args)` (a module-level function, picklable arguments) in a worker; DecodeBusy
        when `workers + max_waiting` tasks are already in flight."""
        pool = self._started()
        with self._lock:
            if self.in_flight >= self.workers + self.limits.max_waiting:
                raise DecodeBusy(f"{self.in_flight} decodes are already running or waiting")
            self.in_flight += 1
            self.submitted += 1
        future = pool.schedule(_run_limited, args=(function, args, self.limits.cpu_seconds),
                               timeout=self.limits.wall_seconds)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self.in_flight -= 1

    def _translate(self, exc: BaseException) -> DecodeLimitExceeded | None:
        if isinstance(exc, TimeoutError):
            self.stopped += 1
            return DecodeLimitExceeded(f"decoding took longer than {self.limits.wall_seconds:g} s and was stopped",
                                       wall_clock=True)
        if isinstance(exc, pebble.ProcessExpired):
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
            future.cancel()  # pebble kills the worker of a running task that is cancelled
            raise
        except (TimeoutError, pebble.ProcessExpired, MemoryError) as exc:
            raise self._translate(exc) from exc  # type: ignore[misc]

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """The same as `run`, for synchronous callers (blocks the calling thread)."""
        future = self.submit(function, *args)
        try:
            return future.result()
        except (TimeoutError, pebble.ProcessExpired, MemoryError) as exc:
            raise self._translate(exc) from exc  # type: ignore[misc]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(timeout=5)
                self._pool = None


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
