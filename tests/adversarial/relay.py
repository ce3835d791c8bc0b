"""A slow or lossy upstream for the race tests: a real TCP relay on loopback in front of moto.

Everything the proxy sends is read at once into a queue (so bytes sent before a kill -9 are not lost) and
forwarded in order; a request that starts with ``PUT `` is held for ``put_delay_s`` first, or dropped with
its connection when ``drop_puts`` is set. Answers are held for ``answer_delay_s`` (the write has landed, the
sender does not know it yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class SlowRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.put_delay_s = 0.0
        self.drop_puts = False
        self.answer_delay_s = 0.0
        self.puts_seen = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def read_client() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await client_reader.read(65536):
                    queue.put_nowait(chunk)
            queue.put_nowait(b"")

        async def forward() -> None:
            while chunk := await queue.get():
                if chunk.startswith(b"PUT "):
                    self.puts_seen += 1
                    if self.drop_puts:
                        client_writer.close()
                        return
                    await asyncio.sleep(self.put_delay_s)
                upstream_writer.write(chunk)
                await upstream_writer.drain()
            await asyncio.sleep(1.0)  # let the upstream finish a request whose sender has gone

        async def answer() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await upstream_reader.read(65536):
                    await asyncio.sleep(self.answer_delay_s)
                    client_writer.write(chunk)
                    await client_writer.drain()

        answering = asyncio.ensure_future(answer())
        try:
            await asyncio.gather(read_client(), forward(), return_exceptions=True)
        finally:
            answering.cancel()
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(Exception):
                    writer.close()
