"""A tiny round-robin HTTP balancer on loopback, for several proxies (or one S3 server) behind one address.

Each request goes to the next backend in turn, byte for byte (the Host header is kept, so SigV4 signatures
made for the balancer's address verify behind it); a backend that refuses the connection is skipped, as a
load balancer's health check would. Every request is logged (method, path, query, backend, status) so tests
can count what reached which backend, e.g. how many times each object was read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

import httpx
import uvicorn

from proxy.demo.servers import bound_socket

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    query: str
    backend: str
    status: int


class Balancer:
    """An ASGI app forwarding to `backends` round-robin; `log` holds one entry per forwarded request."""

    def __init__(self, backends: list[str], *, timeout_s: float = 60.0) -> None:
        self.backends = list(backends)
        self.log: list[Logged] = []
        self._turn = 0
        self._timeout = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.in_flight: dict[int, str] = {}
        self.errors: list[str] = []
        #: requests a backend took but never answered (status 0): it may have acted on them before it died
        self.unanswered: list[Logged] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # a fresh connection per request: a backend that closed an idle one is never mistaken
                    # for a dead backend
                    self._client = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(
                        max_connections=200, max_keepalive_connections=0))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _HOP_BY_HOP]
        target = scope["raw_path"].decode("latin-1")
        query = scope["query_string"].decode("latin-1")
        assert self._client is not None
        self.in_flight[id(scope)] = f"{scope['method']} {target}"
        try:
            await self._forward(scope, send, target, query, headers, bytes(body))
        finally:
            del self.in_flight[id(scope)]

    async def _forward(self, scope, send, target: str, query: str, headers: list[tuple[str, str]],  # type: ignore[no-untyped-def]
                       body: bytes) -> None:
        assert self._client is not None
        start, self._turn = self._turn, self._turn + 1
        for offset in range(len(self.backends)):  # each backend once, from this request's turn on
            backend = self.backends[(start + offset) % len(self.backends)]
            request = self._client.build_request(scope["method"], f"{backend}{target}" + (f"?{query}" if query else ""),
                                                 headers=headers, content=body)
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                self.errors.append(f"{backend}: {type(exc).__name__}: {exc}")
                if not isinstance(exc, httpx.ConnectError):
                    self.unanswered.append(Logged(scope["method"], unquote(target), query, backend, 0))
                continue  # down: the next backend takes it
            try:
                raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
                       if k.lower() not in _HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": raw})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()
            self.log.append(Logged(scope["method"], unquote(target), query, backend, response.status_code))
            return
        await send({"type": "http.response.start", "status": 502, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class RunningBalancer:
    endpoint: str
    app: Balancer
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_balancer(backends: list[str]) -> RunningBalancer:
    app = Balancer(backends)
    sock = bound_socket()  # held from here on: no other server can take the port before this one listens
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           lifespan="on", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("balancer did not start")
        time.sleep(0.02)
    return RunningBalancer(f"http://127.0.0.1:{port}", app, server, thread)
