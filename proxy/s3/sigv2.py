"""Presigned URLs in the query form of signature version 2 (`AWSAccessKeyId`, `Expires`, `Signature`).

boto3's `generate_presigned_url` still writes this form unless told `signature_version="s3v4"`, and S3
(and Ceph RGW) serve it, so the proxy verifies it: HMAC-SHA1 over S3's string to sign, the canonical
resource built by botocore's own SigV2 signer (sub-resources of interest included), the expiry bounded
like a SigV4 one. The `Authorization: AWS ...` header form stays refused: no current client sends it.
A SigV2 URL carries no payload hash: its body is treated like an UNSIGNED-PAYLOAD one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from botocore.auth import HmacV1Auth
from botocore.credentials import Credentials

from proxy.s3.errors import S3Error

_RESOURCE = HmacV1Auth(Credentials("", ""))


def _string_to_sign(method: str, resource: str, expires: str, headers: dict[str, list[str]],
                    query: dict[str, str]) -> str:
    amz: dict[str, str] = {name: ",".join(v.strip() for v in values) for name, values in headers.items()
                           if name.startswith("x-amz-")}
    amz.update({name.lower(): value for name, value in query.items() if name.lower().startswith("x-amz-")})
    custom = "".join(f"{name}:{amz[name]}\n" for name in sorted(amz))
    md5 = (headers.get("content-md5") or [query.get("content-md5", "")])[0]
    content_type = (headers.get("content-type") or [query.get("content-type", "")])[0]
    return f"{method}\n{md5.strip()}\n{content_type.strip()}\n{expires}\n{custom}{resource}"


def verify_presigned(method: str, raw_path: str, raw_query: str, query: dict[str, str],
                     headers: dict[str, list[str]], *, secrets: Callable[[str], str | None], now: datetime,
                     max_expires_s: int) -> str:
    """Verify a SigV2 presigned request; returns the access key or raises the S3Error S3 would answer."""
    access_key, signature, expires_text = query["AWSAccessKeyId"], query["Signature"], query.get("Expires", "")
    try:
        expires = int(expires_text)
    except ValueError as exc:
        raise S3Error("AccessDenied", "Query-string authentication requires the Signature, Expires and "
                      "AWSAccessKeyId parameters") from exc
    seconds_left = expires - now.astimezone(UTC).timestamp()
    if seconds_left < 0:
        raise S3Error("AccessDenied", "Request has expired", extra={
            "Expires": datetime.fromtimestamp(expires, UTC).isoformat(), "ServerTime": now.isoformat()})
    if seconds_left > max_expires_s:
        raise S3Error("AccessDenied", f"The URL may be valid for at most {max_expires_s} seconds.")
    secret = secrets(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": access_key})
    split = urlsplit(f"{raw_path}?{raw_query}")
    host = (headers.get("host") or [""])[0].split(":")[0]
    candidates = [_RESOURCE.canonical_resource(split)]
    if "." in host:  # virtual-host style: the bucket is the first label of the Host
        candidates.append(_RESOURCE.canonical_resource(split, auth_path="/" + host.split(".", 1)[0] + split.path))
    given = signature.encode()
    string_to_sign = ""
    for resource in candidates:
        string_to_sign = _string_to_sign(method, resource, expires_text, headers, query)
        digest = hmac.new(secret.encode(), string_to_sign.encode("utf-8"), hashlib.sha1).digest()
        if hmac.compare_digest(base64.b64encode(digest), given):
            return access_key
    raise S3Error("SignatureDoesNotMatch", extra={"AWSAccessKeyId": access_key, "StringToSign": string_to_sign})
