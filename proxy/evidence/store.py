"""Where quarantined bytes live: a private local folder, or a separate S3 bucket with its own credentials.

Both stores name objects by item id only (never by anything a client sent), hash what they write as
they write it, and read it back after writing to check the SHA-256, so a stored item is known to be
exactly the bytes that were screened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from proxy.config import QuarantineConfig
from proxy.storage.versions import delete_every_version

CHUNK_BYTES = 1024 * 1024
_ITEM_ID = re.compile(r"^[0-9a-f]{32}$")


class StoreError(RuntimeError):
    """The quarantine store could not do what was asked; the message says what and where."""


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str
    md5: str


Body = bytes | IO[bytes]


class QuarantineStore(Protocol):
    async def put(self, item_id: str, body: Body, size: int) -> StoredObject: ...

    def open(self, item_id: str) -> AsyncIterator[bytes]: ...

    async def delete(self, item_id: str) -> None: ...

    async def exists(self, item_id: str) -> bool: ...

    async def close(self) -> None: ...


def check_item_id(item_id: str) -> str:
    if not _ITEM_ID.match(item_id):
        raise StoreError(f"not a quarantine item id: {item_id[:80]!r}")
    return item_id


def _as_file(body: Body) -> IO[bytes]:
    if isinstance(body, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(body))
    if body.seekable():
        body.seek(0)
    return body


def _read_exactly(source: IO[bytes], size: int, sink: IO[bytes] | None) -> StoredObject:
    """Copy exactly ``size`` bytes from source (to sink if given), hashing; refuse a short or long body."""
    sha256, md5, done = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    while done < size:
        chunk = source.read(min(CHUNK_BYTES, size - done))
        if not chunk:
            raise StoreError(f"body ended after {done} of {size} bytes")
        sha256.update(chunk)
        md5.update(chunk)
        if sink is not None:
            sink.write(chunk)
        done += len(chunk)
    if source.read(1):
        raise StoreError(f"body is longer than the {size} bytes declared")
    return StoredObject(size, sha256.hexdigest(), md5.hexdigest())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class LocalStore:
    """Files named by item id in one folder (mode 0700), each written atomically with mode 0600."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _path(self, item_id: str) -> Path:
        return self.root / check_item_id(item_id)

    def _put_sync(self, item_id: str, body: Body, size: int) -> StoredObject:
        self._ensure_root()
        final = self._path(item_id)
        fd, temp_name = tempfile.mkstemp(prefix=".incoming-", dir=self.root)  # mode 0600
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as sink:
                written = _read_exactly(_as_file(body), size, sink)
                sink.flush()
                os.fsync(sink.fileno())
            if _file_sha256(temp) != written.sha256:
                raise StoreError(f"{temp}: read-back SHA-256 differs from what was written")
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return written

    async def put(self, item_id: str, body: Body, size: int) -> StoredObject:
        try:
            return await asyncio.to_thread(self._put_sync, item_id, body, size)
        except OSError as exc:
            raise StoreError(f"quarantine folder {self.root}: {exc.strerror or exc}") from exc

    async def open(self, item_id: str) -> AsyncIterator[bytes]:
        path = self._path(item_id)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise StoreError(f"quarantine item {item_id} has no bytes in {self.root}") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                yield chunk
        finally:
            handle.close()

    async def delete(self, item_id: str) -> None:
        path = self._path(item_id)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def exists(self, item_id: str) -> bool:
        return await asyncio.to_thread(self._path(item_id).is_file)

    async def close(self) -> None:
        return None


class S3Store:
    """A separate bucket on an S3 service, reached with the quarantine's own credentials."""

    def __init__(self, config: QuarantineConfig, *, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 60.0) -> None:
        if not config.bucket:
            raise StoreError("quarantine.bucket is empty")
        self.bucket = config.bucket
        self._config = config
        self._botocore_config = AioConfig(
            signature_version="s3v4", s3={"addressing_style": "path"},
            connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
            retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=8,
        )
        self._stack = contextlib.AsyncExitStack()
        self._client = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        """The aiobotocore client, created on first use and closed by :meth:`close`."""
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(get_session().create_client(
                    "s3",
                    endpoint_url=self._config.endpoint or None,
                    region_name=self._config.region,
                    aws_access_key_id=self._config.access_key or None,
                    aws_secret_access_key=self._config.secret_key or None,
                    config=self._botocore_config,
                ))
            return self._client

    def _where(self, item_id: str) -> str:
        return f"s3://{self.bucket}/{item_id}"

    async def put(self, item_id: str, body: Body, size: int) -> StoredObject:
        check_item_id(item_id)
        source = _as_file(body)
        # Hash (and check the length) in a first pass, so the upload can carry its Content-MD5.
        expected = await asyncio.to_thread(_read_exactly, source, size, None)
        source.seek(0)
        client = await self._s3()
        try:
            await client.put_object(Bucket=self.bucket, Key=item_id, Body=source, ContentLength=size,
                                    ContentType="application/octet-stream",
                                    ContentMD5=_b64_of_hex(expected.md5))
            read_back = hashlib.sha256()
            async for chunk in self.open(item_id):
                read_back.update(chunk)
        except (ClientError, BotoCoreError) as exc:
            with contextlib.suppress(ClientError, BotoCoreError, StoreError):
                await delete_every_version(client, self.bucket, item_id)
            raise StoreError(f"{self._where(item_id)}: {exc}") from exc
        if read_back.hexdigest() != expected.sha256:
            await self.delete(item_id)
            raise StoreError(f"{self._where(item_id)}: read-back SHA-256 differs from what was written")
        return expected

    async def open(self, item_id: str) -> AsyncIterator[bytes]:
        check_item_id(item_id)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=item_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StoreError(f"quarantine item {item_id} has no bytes in {self._where(item_id)}") from exc
            raise StoreError(f"{self._where(item_id)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self._where(item_id)}: {exc}") from exc
        async with response["Body"] as stream:
            while chunk := await stream.read(CHUNK_BYTES):
                yield chunk

    async def delete(self, item_id: str) -> None:
        check_item_id(item_id)
        client = await self._s3()
        try:  # on a versioned quarantine bucket a plain DELETE would keep the purged bytes as an old version
            await delete_every_version(client, self.bucket, item_id)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"{self._where(item_id)}: {exc}") from exc

    async def exists(self, item_id: str) -> bool:
        check_item_id(item_id)
        client = await self._s3()
        try:
            await client.head_object(Bucket=self.bucket, Key=item_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreError(f"{self._where(item_id)}: {exc}") from exc
        return True

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


def _b64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def open_store(config: QuarantineConfig) -> QuarantineStore:
    """The store the [quarantine] section names."""
    if config.store == "s3":
        return S3Store(config)
    return LocalStore(config.path)
