"""How the proxy is served: uvicorn's options, and an HTTP protocol that bounds a request's head.

uvicorn's httptools protocol keeps every byte of a request line and its headers until the head is complete,
before the app (and so authentication) sees anything: a 128 MiB header costs the process hundreds of MiB.
:class:`BoundedHttpToolsProtocol` counts the head's bytes and lines as they arrive and answers S3's
``RequestHeaderSectionTooLarge`` (400, connection closed) as soon as either bound is passed. With h11
(no httptools installed) uvicorn's own ``h11_max_incomplete_event_size`` bounds the head instead.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from proxy.s3.errors import S3Error


def _refusal(max_bytes: int) -> bytes:
    body = S3Error("RequestHeaderSectionTooLarge",
                   f"Your request header section exceeds the maximum allowed size ({max_bytes} bytes).").to_xml()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def _malformed(msg: str) -> bytes:
    body = S3Error("BadRequest", f"An error occurred when parsing the HTTP request: {msg}").to_xml()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def bounded_protocol(max_header_bytes: int, max_header_count: int) -> type:
    """The httptools protocol class with these bounds on each request's head."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._reset_head()

        def _reset_head(self) -> None:
            self._in_head, self._head_bytes, self._head_lines, self._head_tail = True, 0, 0, b""

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                window = self._head_tail + data
                end = window.find(b"\r\n\r\n")
                counted = len(data) if end < 0 else max(end + 4 - len(self._head_tail), 0)
                segment = data[:counted]
                self._head_bytes += counted
                self._head_lines += segment.count(b"\r\n") + int(
                    self._head_tail.endswith(b"\r") and segment.startswith(b"\n"))
                self._head_tail = window[-3:]
                # request line + headers + the empty line that ends the head
                if self._head_bytes > max_header_bytes or self._head_lines > max_header_count + 2:
                    self.transport.write(_refusal(max_header_bytes))
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reset_head()

        def send_400_response(self, msg: str) -> None:
            """A request the parser rejects is answered as S3 answers one: an S3 XML error, then close."""
            self.transport.write(_malformed(msg))
            self.transport.close()

    return BoundedHttpToolsProtocol


def uvicorn_options(max_header_bytes: int, max_header_count: int) -> dict:
    """uvicorn.Config/run keyword arguments: the fastest loop and parser installed, the head bounded
    ([limits] max_header_bytes and max_header_count)."""
    options: dict[str, Any] = {"loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"}
    if importlib.util.find_spec("httptools"):
        options["http"] = bounded_protocol(max_header_bytes, max_header_count)
    else:
        options["http"] = "h11"
        options["h11_max_incomplete_event_size"] = max_header_bytes
    return options
