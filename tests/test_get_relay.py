"""The GET relay (proxy.front.relay): a client that leaves mid-body stops the proxy reading the upstream.

The upstream here is a real HTTP server on loopback that answers the object's GET with a 256 MiB body, written as
fast as the proxy reads it, and counts what it could write before the proxy closed the connection."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx

from proxy.config import load_config
from proxy.demo.servers import S3Server
from tests.support.proxy import CLIENT_BUCKET, start_in_process, write_config

MIB = 1024 * 1024
BODY_BYTES = 256 * MIB


class EndlessUpstream:
    """Answers a GET of media/v with a 200 and a BODY_BYTES body; `written` and `closed` say how far it got."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = threading.Event()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._answer, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"GET /media/v "):  # anything else the proxy asks (its janitor): nothing here
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nETag: \"e\"\r\n"
                     b"Content-Length: %d\r\n\r\n" % BODY_BYTES)
        chunk = b"v" * MIB
        with contextlib.suppress(ConnectionError):
            while self.written < BODY_BYTES:
                writer.write(chunk)
                await writer.drain()
                self.written += len(chunk)
            await reader.read()  # the proxy read it all: wait for it to close
        self.closed.set()
        writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def test_client_leaving_mid_body_stops_the_upstream_read(tmp_path) -> None:
    upstream = EndlessUpstream()
    server = S3Server(f"http://127.0.0.1:{upstream.port}")
    path = write_config(tmp_path, server, "media")
    running = start_in_process(load_config(path), server, "media", path)
    try:
        url = running.client().generate_presigned_url("get_object", Params={"Bucket": CLIENT_BUCKET, "Key": "v"})
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-length"] == str(BODY_BYTES)
            received = 0
            for piece in answer.iter_raw():
                received += len(piece)
                if received >= MIB:
                    break  # the client leaves with its connection
        assert upstream.closed.wait(20), "the proxy kept the upstream connection"
        time.sleep(0.2)
        assert upstream.written < BODY_BYTES // 2, f"the proxy read {upstream.written} bytes for a client that left"
    finally:
        running.stop()
        upstream.stop()
