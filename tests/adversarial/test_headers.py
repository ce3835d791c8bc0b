"""Enormous request heads (issue 9, time and memory as weapons): a 128 MiB header, or thousands of headers,
sent over a raw socket to a real `bucketguard serve` before any authentication. The client gets S3's
RequestHeaderSectionTooLarge at once, the proxy's peak memory (VmHWM) barely moves, nothing lands, and
ordinary requests with many metadata headers still work."""

from __future__ import annotations

import io
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_subprocess, write_config

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def served(moto_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    bucket = new_bucket(moto_server)
    config = write_config(tmp_path_factory.mktemp("headers"), moto_server, bucket)
    proxy = start_subprocess(config, moto_server, bucket)
    yield proxy
    proxy.stop()


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def attack(proxy: RunningProxy, head: bytes, filler: bytes, total: int) -> tuple[bytes, int]:
    """Send `head`, then `filler` repeated up to `total` bytes, reading whatever the proxy answers meanwhile.

    Returns (answer, bytes sent before the proxy stopped taking them)."""
    answer, sent = b"", 0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        try:
            sock.sendall(head)
            while sent < total:
                sock.sendall(filler)
                sent += len(filler)
                if select.select([sock], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


REQUEST = (f"PUT /{CLIENT_BUCKET}/attack.png HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n").encode()


def test_a_128_mib_header_is_refused_before_it_is_buffered(served: RunningProxy) -> None:
    before = peak_kib(served.process.pid)
    answer, sent = attack(served, REQUEST + b"X-Amz-Meta-Big: ", b"a" * 65536, 128 * MIB)
    after = peak_kib(served.process.pid)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"<Code>RequestHeaderSectionTooLarge</Code>" in answer
    assert sent < 32 * MIB, f"the proxy kept reading the header ({sent} bytes)"
    assert after - before < 16 * 1024, f"peak memory grew by {(after - before) // 1024} MiB"
    assert served.upstream_keys() == []


def test_ten_thousand_small_headers_are_refused(served: RunningProxy) -> None:
    before = peak_kib(served.process.pid)
    lines = b"".join(b"X-Amz-Meta-H%d: v\r\n" % i for i in range(10_000))
    answer, _ = attack(served, REQUEST + lines, b"", 0)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"RequestHeaderSectionTooLarge" in answer
    assert peak_kib(served.process.pid) - before < 16 * 1024
    assert served.upstream_keys() == []


def test_a_long_request_line_is_refused(served: RunningProxy) -> None:
    head = f"GET /{CLIENT_BUCKET}/".encode()
    answer, sent = attack(served, head, b"x" * 65536, 64 * MIB)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"RequestHeaderSectionTooLarge" in answer
    assert sent < 32 * MIB


def test_ordinary_requests_with_metadata_still_work(served: RunningProxy) -> None:
    s3 = served.client()
    metadata = {f"field-{i}": "x" * 100 for i in range(40)}
    fine = io.BytesIO()  # media: the proxy keeps out bytes that are no image or video (on_non_media)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(fine, "PNG")
    s3.put_object(Bucket=CLIENT_BUCKET, Key="ok.bin", Body=fine.getvalue(), Metadata=metadata)
    assert served.upstream.get(served.real_bucket, "ok.bin") == fine.getvalue()
    assert s3.head_object(Bucket=CLIENT_BUCKET, Key="ok.bin")["Metadata"] == metadata
    s3.delete_object(Bucket=CLIENT_BUCKET, Key="ok.bin")
