"""The worker side of :mod:`inference.decode_pool`: a decode process's limits and its life.

It caps its own address space once (RLIMIT_AS, after the decoders are imported) and its CPU time before each task
(RLIMIT_CPU, counted from the task's start), dies with its parent, and serves one task at a time from its pipe.
Imports nothing of the project: it runs in a fresh `spawn` interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


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


def serve(conn: Any, memory_bytes: int) -> None:
    """A worker's life: `None` once ready (its imports are not a task's time), then one task at a time from
    its pipe and its result (or exception) back."""
    _start_worker(memory_bytes)
    conn.send(None)
    while True:
        try:
            function, args, cpu_seconds = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, _run_limited(function, args, cpu_seconds))
        except BaseException as exc:  # the caller gets it, as raised
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result or exception
            conn.send((False, RuntimeError(f"the decode result could not be sent back: {exc!r}")))
