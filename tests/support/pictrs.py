"""An emulation of pict-rs's admin API for the suite (pict-rs itself does not run here).

It implements exactly the documented endpoints, behind `X-Api-Token`: `POST /internal/purge?alias=`
(removes the file, every alias and every variant; answers `{"msg": "ok", "aliases": [...]}`),
`GET /internal/aliases?alias=` (the same JSON, nothing removed) and `GET /internal/identifier?alias=`
(`{"msg": "ok", "identifier": KEY}`). Unknown aliases answer 404, a wrong token 401. Its files optionally
live in pict-rs's PostgreSQL repository layout (`hashes`, `variants`, `aliases` as pict-rs's migrations
create them) so the key -> alias lookup through the repository is exercised against real tables.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.demo.servers import bound_socket

#: pict-rs's repository tables (PostgreSQL repo), the columns its migrations define and this lookup reads.
PICTRS_REPO_DDL = """
CREATE TABLE hashes (hash TEXT PRIMARY KEY, identifier TEXT NOT NULL, motion_identifier TEXT,
                     created_at TIMESTAMP NOT NULL DEFAULT now(), blurhash TEXT);
CREATE TABLE variants (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), hash TEXT NOT NULL REFERENCES hashes(hash)
                       ON DELETE CASCADE, variant TEXT NOT NULL, identifier TEXT NOT NULL,
                       accessed TIMESTAMP NOT NULL DEFAULT now());
CREATE TABLE aliases (alias TEXT PRIMARY KEY, hash TEXT NOT NULL REFERENCES hashes(hash) ON DELETE CASCADE,
                      token TEXT NOT NULL);
"""


@dataclass
class StoredFile:
    hash: str
    identifier: str
    aliases: list[str]
    variants: dict[str, str] = field(default_factory=dict)  # variant -> identifier
    motion_identifier: str | None = None


class PictrsEmulation:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.files: dict[str, StoredFile] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, path, alias)
        self.purged: list[StoredFile] = []
        self.app = Starlette(routes=[Route("/internal/purge", self.purge, methods=["POST"]),
                                     Route("/internal/aliases", self.aliases, methods=["GET"]),
                                     Route("/internal/identifier", self.identifier, methods=["GET"])])

    def add(self, file: StoredFile) -> None:
        self.files[file.hash] = file

    def _file(self, request: Request) -> tuple[StoredFile | None, JSONResponse | None]:
        alias = request.query_params.get("alias", "")
        self.calls.append((request.method, request.url.path, alias))
        if request.headers.get("x-api-token") != self.api_key:
            return None, JSONResponse({"msg": "Invalid API key"}, status_code=401)
        for file in self.files.values():
            if alias in file.aliases:
                return file, None
        return None, JSONResponse({"msg": "Alias not found"}, status_code=404)

    async def purge(self, request: Request) -> JSONResponse:
        file, error = self._file(request)
        if error is not None:
            return error
        assert file is not None
        del self.files[file.hash]
        self.purged.append(file)
        return JSONResponse({"msg": "ok", "aliases": file.aliases})

    async def aliases(self, request: Request) -> JSONResponse:
        file, error = self._file(request)
        return error or JSONResponse({"msg": "ok", "aliases": file.aliases})  # type: ignore[union-attr]

    async def identifier(self, request: Request) -> JSONResponse:
        file, error = self._file(request)
        return error or JSONResponse({"msg": "ok", "identifier": file.identifier})  # type: ignore[union-attr]


@dataclass
class RunningPictrs:
    endpoint: str
    emulation: PictrsEmulation
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_pictrs(api_key: str) -> RunningPictrs:
    emulation = PictrsEmulation(api_key)
    sock = bound_socket()  # held from here on: no other server can take the port before this one listens
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(emulation.app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("pict-rs emulation did not start")
        time.sleep(0.02)
    return RunningPictrs(f"http://127.0.0.1:{port}", emulation, server, thread)
