"""Upload bodies: kept in memory up to a limit, spooled to a temporary file beyond it, hashed on the way in."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import tempfile
from collections.abc import AsyncIterator
from typing import BinaryIO


class BodyTooLarge(Exception):
    """The body grew past the configured maximum object size."""


class SpooledBody:
    """One upload body; SHA-256 and MD5 are computed in the same pass that stores the bytes.

    Memory use is bounded by `memory_limit`: past it the bytes move to a file in `spool_dir`, which is
    deleted on close. Writing to memory stays on the event loop (it is cheap); file writes go to a thread.
    """

    def __init__(self, *, memory_limit: int, max_bytes: int, spool_dir: str | None = None) -> None:
        self._memory_limit = memory_limit
        self._max_bytes = max_bytes
        self._spool_dir = spool_dir or None
        self._memory: bytearray | bytes = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5()  # noqa: S324 - content digest S3 clients send, not a security use
        self._closed = False

    @classmethod
    def from_bytes(cls, data: bytes, *, memory_limit: int | None = None) -> SpooledBody:
        body = cls(memory_limit=memory_limit or max(len(data), 1), max_bytes=max(len(data), 1))
        body.write_sync(data)
        return body

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(self._md5.digest()).decode()

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def _account(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("body is closed")
        if self._size + len(data) > self._max_bytes:
            raise BodyTooLarge(f"body exceeds {self._max_bytes} bytes")
        self._size += len(data)
        self._sha256.update(data)
        self._md5.update(data)

    def _spill(self) -> None:
        if self._spool_dir:
            os.makedirs(self._spool_dir, mode=0o700, exist_ok=True)
        handle = tempfile.TemporaryFile(dir=self._spool_dir, prefix="bucketguard-")  # noqa: SIM115
        handle.write(self._memory)
        self._memory = bytearray()
        self._file = handle  # type: ignore[assignment]

    def write_sync(self, data: bytes) -> None:
        if not data:
            return
        self._account(data)
        if self._file is None and len(self._memory) + len(data) <= self._memory_limit:
            self._memory += data
            return
        if self._file is None:
            self._spill()
        assert self._file is not None
        self._file.write(data)

    async def write(self, data: bytes) -> None:
        if self._file is None and len(self._memory) + len(data) <= self._memory_limit:
            self.write_sync(data)
        else:
            await asyncio.to_thread(self.write_sync, data)

    def reader(self) -> BinaryIO:
        """A seekable binary file positioned at 0 (shares the spool file; read it, don't close it)."""
        if self._file is None:
            # Freeze the buffer once; BytesIO over bytes shares it instead of holding a second copy.
            self._memory = bytes(self._memory)
            return io.BytesIO(self._memory)
        self._file.flush()
        self._file.seek(0)
        return self._file

    def read_all(self) -> bytes:
        """The whole body in memory: for bodies known to be small (XML documents, thumbnails)."""
        if self._file is None:
            self._memory = bytes(self._memory)
            return self._memory
        self._file.flush()
        self._file.seek(0)
        return self._file.read()

    async def chunks(self, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        if self._file is None:
            view = memoryview(self._memory)
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start:start + chunk_size])
            return
        self._file.flush()
        position = 0
        while True:
            chunk = await asyncio.to_thread(self._read_at, position, chunk_size)
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    def _read_at(self, position: int, size: int) -> bytes:
        assert self._file is not None
        self._file.seek(position)
        return self._file.read(size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None

    async def __aenter__(self) -> SpooledBody:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
