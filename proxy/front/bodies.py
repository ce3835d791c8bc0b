"""Reading one request body into a SpooledBody, checked against everything the client declared.

The length (Content-Length, or x-amz-decoded-content-length for aws-chunked), the signed SHA-256, a
Content-MD5 and any x-amz-checksum-* header are all verified before the body is handed on; a body that
fails any of them is refused with the S3 error S3 would give, and nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from collections.abc import AsyncIterator, Mapping

from proxy.s3.chunked import AwsChunkedDecoder, Checksum
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import AuthContext, check_payload_sha256
from proxy.storage.spool import BodyTooLarge, SpooledBody


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer") from exc
    if number < 0:
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer")
    return number


def declared_size(headers: Mapping[str, str], auth: AuthContext) -> int | None:
    """The object size the client announces, before reading anything."""
    if auth.streaming:
        return _int_header(headers, "x-amz-decoded-content-length")
    return _int_header(headers, "content-length")


def _expected_md5(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.") from exc
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


#: Content-Encoding values a body may carry: the framing S3 itself removes, and "no encoding".
ACCEPTED_ENCODINGS = frozenset({"aws-chunked", "identity"})


def check_content_encoding(headers: Mapping[str, str]) -> None:
    """Refuse any Content-Encoding but aws-chunked/identity: the bytes screened must be the bytes a reader
    gets, and a `gzip` object is served decoded by every HTTP client (pict-rs never sends one)."""
    tokens = {t.strip().lower() for t in headers.get("content-encoding", "").split(",")} - {""}
    refused = sorted(tokens - ACCEPTED_ENCODINGS)
    if refused:
        raise S3Error("InvalidArgument", f"Content-Encoding {', '.join(refused)} is not accepted: upload the bytes "
                      "as they are to be served (only aws-chunked or identity).",
                      extra={"ArgumentName": "Content-Encoding", "ArgumentValue": ", ".join(refused)})


def _header_checksum(headers: Mapping[str, str]) -> tuple[str, Checksum] | None:
    for name, value in headers.items():
        if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type":
            return value, Checksum(name[len("x-amz-checksum-"):])
    return None


async def read_body(
    stream: AsyncIterator[bytes],
    headers: Mapping[str, str],
    auth: AuthContext,
    *,
    max_bytes: int,
    memory_limit: int,
    spool_dir: str | None,
    timeout_s: float,
) -> SpooledBody:
    """Read, decode and verify a request body; the caller owns (and closes) the returned body."""
    check_content_encoding(headers)
    size = declared_size(headers, auth)
    if size is None and not auth.streaming and headers.get("transfer-encoding", "").lower() != "chunked":
        raise S3Error("MissingContentLength")
    if size is not None and size > max_bytes:
        raise S3Error("EntityTooLarge", extra={"ProposedSize": str(size), "MaxSizeAllowed": str(max_bytes)})
    expected_md5 = _expected_md5(headers)
    checksum = None if auth.streaming else _header_checksum(headers)
    decoder = None
    if auth.streaming:
        encoding = headers.get("content-encoding", "")
        if "aws-chunked" not in encoding.lower() and not auth.payload.startswith("STREAMING"):
            raise S3Error("InvalidRequest", "A STREAMING payload needs Content-Encoding: aws-chunked")
        decoder = AwsChunkedDecoder(auth, trailer_names=headers.get("x-amz-trailer", ""), decoded_length=size)
    body = SpooledBody(memory_limit=memory_limit, max_bytes=max_bytes, spool_dir=spool_dir)
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in stream:
                if decoder is not None:
                    chunk = decoder.feed(chunk)
                if checksum is not None:
                    checksum[1].update(chunk)
                await body.write(chunk)
        if decoder is not None:
            decoder.finish()
        if size is not None and body.size != size:
            raise S3Error("IncompleteBody")
        check_payload_sha256(auth, body.sha256)
        if expected_md5 is not None and not hmac.compare_digest(expected_md5, base64.b64decode(body.md5_base64)):
            raise S3Error("BadDigest")
        if checksum is not None and not hmac.compare_digest(checksum[0], checksum[1].b64digest()):
            raise S3Error("BadDigest", f"The {checksum[1].algorithm} you specified did not match the calculated "
                          "checksum.")
    except BodyTooLarge as exc:
        body.close()
        raise S3Error("EntityTooLarge", extra={"MaxSizeAllowed": str(max_bytes)}) from exc
    except TimeoutError as exc:
        body.close()
        raise S3Error("RequestTimeout", "Your socket connection to the server was not read from or written "
                      "to within the timeout period.") from exc
    except BaseException:
        body.close()
        raise
    return body
