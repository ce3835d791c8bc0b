"""SpooledBody: memory up to the limit, a real temporary file beyond it, hashes in one pass, hard maximum."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from pathlib import Path

import pytest

from proxy.storage.spool import BodyTooLarge, SpooledBody

KIB = 1024
MIB = 1024 * KIB


def payload(size: int) -> bytes:
    return os.urandom(size)


def fd_path(handle: object) -> str:
    """Where the open file really lives (an unlinked temporary file shows as '<dir>/#<inode> (deleted)')."""
    return os.readlink(f"/proc/self/fd/{handle.fileno()}")  # type: ignore[attr-defined]


async def write_in_pieces(body: SpooledBody, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        await body.write(data[start:start + piece])


async def test_small_body_stays_in_memory_with_hashes_and_reader() -> None:
    data = payload(10 * KIB)
    async with SpooledBody(memory_limit=64 * KIB, max_bytes=MIB) as body:
        await write_in_pieces(body, data, 3000)
        assert body.in_memory
        assert body.size == len(data)
        assert body.sha256 == hashlib.sha256(data).hexdigest()
        assert body.md5 == hashlib.md5(data).hexdigest()
        assert body.md5_base64 == base64.b64encode(hashlib.md5(data).digest()).decode()
        reader = body.reader()
        assert reader.tell() == 0
        assert reader.read() == data
        assert body.reader().read(5) == data[:5]  # every reader starts at 0
        assert b"".join([chunk async for chunk in body.chunks(4096)]) == data
        assert body.read_all() == data


async def test_empty_body_has_the_hashes_of_nothing() -> None:
    async with SpooledBody(memory_limit=KIB, max_bytes=KIB) as body:
        await body.write(b"")
        assert body.size == 0
        assert body.sha256 == hashlib.sha256(b"").hexdigest()
        assert body.md5 == "d41d8cd98f00b204e9800998ecf8427e"
        assert body.reader().read() == b""
        assert [chunk async for chunk in body.chunks()] == []


async def test_body_past_the_limit_goes_to_a_file_in_spool_dir(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    data = payload(3 * MIB + 17)
    body = SpooledBody(memory_limit=256 * KIB, max_bytes=16 * MIB, spool_dir=str(spool_dir))
    await write_in_pieces(body, data, 64 * KIB + 3)
    assert not body.in_memory
    reader = body.reader()
    # The bytes are really in a file in the spool directory, already unlinked so nothing is left behind.
    assert fd_path(reader).startswith(str(spool_dir) + "/")
    assert os.fstat(reader.fileno()).st_size == len(data)
    assert os.listdir(spool_dir) == []
    assert body.size == len(data)
    assert body.sha256 == hashlib.sha256(data).hexdigest()
    assert body.md5 == hashlib.md5(data).hexdigest()
    assert reader.tell() == 0 and reader.read() == data
    chunks = [chunk async for chunk in body.chunks(MIB)]
    assert [len(c) for c in chunks] == [MIB, MIB, MIB, 17]
    assert b"".join(chunks) == data
    assert body.reader().read(4) == data[:4]  # chunks() leaves the reader usable from 0
    body.close()
    assert reader.closed
    body.close()  # closing twice is harmless


async def test_spooled_body_does_not_hold_the_data_in_memory(tmp_path: Path) -> None:
    piece = payload(64 * KIB)
    body = SpooledBody(memory_limit=256 * KIB, max_bytes=64 * MIB, spool_dir=str(tmp_path))
    tracemalloc.start()
    try:
        for _ in range(16 * MIB // len(piece)):
            await body.write(piece)
        _, peak = tracemalloc.get_traced_memory()
        async for _chunk in body.chunks(256 * KIB):
            pass
        _, peak_reading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body.size == 16 * MIB
    assert peak < 2 * MIB, f"writing 16 MiB held {peak} bytes"
    assert peak_reading < 2 * MIB, f"reading 16 MiB held {peak_reading} bytes"
    body.close()


async def test_max_bytes_is_a_hard_limit_and_leaves_the_body_unchanged() -> None:
    async with SpooledBody(memory_limit=100, max_bytes=1000) as body:
        await body.write(b"a" * 1000)  # exactly the maximum is fine
        with pytest.raises(BodyTooLarge):
            await body.write(b"b")
        assert body.size == 1000
        assert body.sha256 == hashlib.sha256(b"a" * 1000).hexdigest()
    async with SpooledBody(memory_limit=100, max_bytes=1000) as body:
        with pytest.raises(BodyTooLarge):
            await body.write(b"c" * 1001)  # one oversized write, before anything is stored
        assert body.size == 0


async def test_writing_after_close_is_refused(tmp_path: Path) -> None:
    body = SpooledBody(memory_limit=10, max_bytes=1000, spool_dir=str(tmp_path))
    async with body:
        await body.write(b"x" * 50)
    with pytest.raises(ValueError, match="closed"):
        await body.write(b"more")


async def test_writes_after_reader_is_taken_are_kept() -> None:
    body = SpooledBody(memory_limit=100, max_bytes=1000)
    await body.write(b"abc")
    assert body.reader().read() == b"abc"
    await body.write(b"def")
    assert body.reader().read() == b"abcdef"
    await body.write(b"g" * 200)  # and past the limit, into the file
    assert not body.in_memory
    assert body.read_all() == b"abcdef" + b"g" * 200
    assert body.md5 == hashlib.md5(b"abcdef" + b"g" * 200).hexdigest()
    body.close()


def test_from_bytes() -> None:
    body = SpooledBody.from_bytes(b"hello")
    assert body.read_all() == b"hello"
    assert body.sha256 == hashlib.sha256(b"hello").hexdigest()
    body.close()
