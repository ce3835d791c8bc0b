"""The answer to a GET: the upstream's body relayed to the client chunk by chunk, in the request's own task.

Starlette's StreamingResponse opens an anyio task group with a second task for every response to hear the client
leave (uvicorn speaks ASGI 2.3); on the proxy's hottest path that cost more than the relay itself. Here one plain
task listens for the disconnect, and the relay stops reading the upstream as soon as it has heard one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


async def _until_disconnect(receive: Receive) -> None:
    with contextlib.suppress(Exception):  # a server that cannot say: the relay simply runs to its end
        while (await receive())["type"] != "http.disconnect":
            pass


class RelayResponse(StreamingResponse):
    """A StreamingResponse over an upstream body (an async generator), closed however the relay ends; `close`
    gives the upstream answer back even when its body was never started."""

    body_iterator: AsyncIterator[bytes]

    def __init__(self, content: AsyncIterator[bytes], *, status_code: int, headers: Mapping[str, str],
                 close: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(content, status_code=status_code, headers=headers)
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                if listener.done():  # the client left: read no more of the upstream
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            closing = getattr(self.body_iterator, "aclose", None)
            if closing is not None:
                await closing()
            if self._close is not None:
                await self._close()
