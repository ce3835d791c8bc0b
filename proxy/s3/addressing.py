"""Which bucket and key a request names: path style or virtual-host style."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from proxy.s3.errors import S3Error

# S3's rules for bucket names, loosened to what real servers accept in path style (dots, underscores).
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", re.IGNORECASE)
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class Target:
    """What a request addresses: no bucket (service), a bucket (key None), or an object."""

    bucket: str | None
    key: str | None
    virtual_host: bool = False


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never virtual-host style
        return host
    return host.rsplit(":", 1)[0] if ":" in host else host


def bucket_from_host(host: str, base_domains: Iterable[str]) -> str | None:
    """The bucket in `{bucket}.{base}`, or None when the Host is not virtual-host style."""
    name = _host_name(host)
    for base in base_domains:
        base = base.lower().strip(".")
        suffix = "." + base
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def decode_key(raw: bytes) -> str:
    """Percent-decode once and read as UTF-8: the exact key the client meant."""
    try:
        key = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise S3Error("InvalidURI", "Couldn't parse the specified URI: the key is not valid UTF-8.") from exc
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long")
    return key


def check_bucket_name(bucket: str) -> str:
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", resource=bucket)
    return bucket


def resolve(host: str, raw_path: bytes | str, base_domains: Iterable[str]) -> Target:
    """Resolve the ASGI `raw_path` (still percent-encoded) and Host header into a Target."""
    if isinstance(raw_path, str):
        raw_path = raw_path.encode("latin-1")
    raw_path = raw_path.split(b"?", 1)[0]
    if not raw_path.startswith(b"/"):
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
    bucket = bucket_from_host(host, base_domains)
    if bucket is not None:
        check_bucket_name(bucket)
        rest = raw_path[1:]
        return Target(bucket, decode_key(rest) if rest else None, virtual_host=True)
    path = raw_path[1:]
    if not path:
        return Target(None, None)
    raw_bucket, sep, raw_key = path.partition(b"/")
    bucket = decode_key(raw_bucket)
    check_bucket_name(bucket)
    if not sep or not raw_key:
        return Target(bucket, None)
    return Target(bucket, decode_key(raw_key))


@dataclass(frozen=True)
class CopySource:
    bucket: str
    key: str
    version_id: str = ""


def parse_copy_source(value: str) -> CopySource:
    """`x-amz-copy-source`: `[/]bucket/key[?versionId=...]`, percent-encoded as clients send it."""
    path, _, query = value.partition("?")
    version_id = ""
    if query:
        name, _, version = query.partition("=")
        if name != "versionId" or not version:
            raise S3Error("InvalidArgument", "Invalid copy source: only ?versionId= may follow the key.")
        version_id = unquote_to_bytes(version).decode("utf-8", "replace")
    bucket_raw, sep, key_raw = path.lstrip("/").partition("/")
    if not sep or not bucket_raw or not key_raw:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey")
    return CopySource(check_bucket_name(decode_key(bucket_raw.encode("latin-1", "replace"))),
                      decode_key(key_raw.encode("utf-8")), version_id)
