"""Incremental decoding of `aws-chunked` request bodies, with chunk signatures and trailer checksums.

Body framing: `<hex-size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n` repeated, a final zero-size chunk,
then for the *-TRAILER payloads `name:value\\r\\n` trailer lines (plus `x-amz-trailer-signature` when
signed) and an empty line. Each signed chunk's signature chains from the request's seed signature.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    AuthContext,
    hmac_hex,
    same_digest,
)

MAX_LINE_BYTES = 4096
MAX_TRAILER_BYTES = 16 * 1024


def _crc32c() -> Callable[[bytes, int], int] | None:
    """CRC32C needs awscrt (botocore's optional `crt` extra); without it such uploads are refused clearly."""
    try:
        from awscrt import checksums  # type: ignore[import-not-found]
    except ImportError:
        return None
    return checksums.crc32c


class Checksum:
    """A streaming checksum whose digest is compared base64-encoded, as in x-amz-checksum-* trailers."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._crc = 0
        self._hash: hashlib._Hash | None = None
        self._crc32c = None
        if algorithm == "crc32":
            pass
        elif algorithm == "crc32c":
            self._crc32c = _crc32c()
            if self._crc32c is None:
                raise S3Error("InvalidRequest", "The crc32c checksum algorithm is not supported by this server.")
        elif algorithm in ("sha1", "sha256"):
            self._hash = hashlib.new(algorithm)
        else:
            raise S3Error("InvalidRequest", f"Unsupported checksum algorithm: {algorithm}")

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self._crc32c is not None:
            self._crc = self._crc32c(data, self._crc)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def b64digest(self) -> str:
        raw = self._hash.digest() if self._hash is not None else self._crc.to_bytes(4, "big")
        return base64.b64encode(raw).decode()


class AwsChunkedDecoder:
    """Feed raw body bytes in any pieces; get the plain payload out; `finish()` verifies the end."""

    def __init__(self, auth: AuthContext, *, trailer_names: str = "", decoded_length: int | None = None,
                 max_chunk_bytes: int = 64 * 1024 * 1024) -> None:
        if auth.payload not in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
            raise ValueError(f"not an aws-chunked payload: {auth.payload}")
        self._auth = auth
        self._signed = auth.payload != STREAMING_UNSIGNED_TRAILER
        self._expects_trailer = auth.payload != STREAMING_SIGNED
        self._previous_signature = auth.seed_signature
        self._decoded_length = decoded_length
        self._max_chunk = max_chunk_bytes
        self._buffer = bytearray()
        self._state = "header"  # header -> data -> data-end -> (header...) -> trailer -> done
        self._remaining = 0
        self._chunk_signature = ""
        self._chunk_hash = hashlib.sha256()
        self._decoded = 0
        self._trailers: dict[str, str] = {}
        self._trailer_bytes = 0
        self._checksum: Checksum | None = None
        names = [n.strip().lower() for n in trailer_names.split(",") if n.strip()]
        for name in names:
            if name.startswith("x-amz-checksum-"):
                self._checksum = Checksum(name[len("x-amz-checksum-"):])
                self._checksum_name = name
        if names and not self._expects_trailer:
            raise S3Error("InvalidRequest", "x-amz-trailer was sent with a payload type that has no trailer.")

    @property
    def decoded_size(self) -> int:
        return self._decoded

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            if self._state == "header":
                line = self._take_line()
                if line is None:
                    break
                self._start_chunk(line)
            elif self._state == "data":
                if not self._buffer:
                    break
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                self._chunk_hash.update(piece)
                if self._checksum is not None:
                    self._checksum.update(piece)
                out += piece
                self._decoded += len(piece)
                if self._remaining == 0:
                    self._state = "data-end"
            elif self._state == "data-end":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise S3Error("IncompleteBody", "aws-chunked body: a chunk is not followed by CRLF.")
                del self._buffer[:2]
                self._end_chunk()
                self._state = "header"
            elif self._state == "trailer":
                line = self._take_line()
                if line is None:
                    break
                if not line:
                    self._state = "done"
                    continue
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise S3Error("InvalidRequest", "aws-chunked body: the trailer is too large.")
                name, sep, value = line.decode("latin-1").partition(":")
                if not sep:
                    raise S3Error("InvalidRequest", "aws-chunked body: malformed trailer line.")
                self._trailers[name.strip().lower()] = value.strip()
            else:  # done
                if self._buffer.strip(b"\r\n"):
                    raise S3Error("InvalidRequest", "aws-chunked body: data after the final chunk.")
                self._buffer.clear()
                break
        return bytes(out)

    def _take_line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise S3Error("InvalidRequest", "aws-chunked body: a chunk header line is too long.")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _start_chunk(self, line: bytes) -> None:
        size_text, _, extension = line.decode("latin-1").partition(";")
        try:
            size = int(size_text.strip(), 16)
        except ValueError as exc:
            raise S3Error("InvalidRequest", "aws-chunked body: malformed chunk size.") from exc
        if size < 0 or size > self._max_chunk:
            raise S3Error("InvalidRequest", "aws-chunked body: chunk size out of bounds.")
        self._chunk_signature = ""
        if extension:
            name, _, value = extension.partition("=")
            if name.strip() == "chunk-signature":
                self._chunk_signature = value.strip()
        if self._signed and not self._chunk_signature:
            raise S3Error("SignatureDoesNotMatch", "aws-chunked body: a chunk carries no chunk-signature.")
        self._remaining = size
        self._chunk_hash = hashlib.sha256()
        if size == 0:
            self._end_chunk()
            self._state = "trailer" if self._expects_trailer else "done"
        else:
            self._state = "data"

    def _end_chunk(self) -> None:
        if not self._signed:
            return
        string_to_sign = "\n".join([
            "AWS4-HMAC-SHA256-PAYLOAD", self._auth.amz_date, self._auth.scope, self._previous_signature,
            EMPTY_SHA256, self._chunk_hash.hexdigest(),
        ])
        expected = hmac_hex(self._auth.signing_key, string_to_sign)
        if not same_digest(expected, self._chunk_signature.lower()):
            raise S3Error("SignatureDoesNotMatch", "aws-chunked body: a chunk signature does not match.")
        self._previous_signature = expected

    def finish(self) -> dict[str, str]:
        """Check that the body ended properly; verify the trailer checksum and signature."""
        if self._state not in ("done", "trailer") or (self._state == "trailer" and self._buffer):
            raise S3Error("IncompleteBody", "aws-chunked body ended before its final chunk.")
        if self._decoded_length is not None and self._decoded != self._decoded_length:
            raise S3Error("IncompleteBody", "x-amz-decoded-content-length does not match the data sent.")
        if self._auth.payload == STREAMING_SIGNED_TRAILER:
            self._verify_trailer_signature()
        if self._checksum is not None:
            sent = self._trailers.get(self._checksum_name)
            if sent is None:
                raise S3Error("InvalidRequest", f"The declared trailer {self._checksum_name} was not sent.")
            if not same_digest(self._checksum.b64digest(), sent):
                raise S3Error("BadDigest", f"The {self._checksum.algorithm} you specified did not match the "
                              "calculated checksum.")
        return dict(self._trailers)

    def _verify_trailer_signature(self) -> None:
        signature = self._trailers.pop("x-amz-trailer-signature", "")
        canonical = "".join(f"{name}:{value}\n" for name, value in self._trailers.items())
        string_to_sign = "\n".join([
            "AWS4-HMAC-SHA256-TRAILER", self._auth.amz_date, self._auth.scope, self._previous_signature,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ])
        expected = hmac_hex(self._auth.signing_key, string_to_sign)
        if not same_digest(expected, signature.lower()):
            raise S3Error("SignatureDoesNotMatch", "aws-chunked body: the trailer signature does not match.")
