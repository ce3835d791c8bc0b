"""The differential harness: one case runs twice, against the upstream alone and through the proxy, and the
two transcripts (status, S3 error code, the response fields that matter) must be equal.

A case is a function of a :class:`Side`. It makes requests with `side.call` (boto3) or `side.raw` (a SigV4
signed request sent as written, for what boto3 hides: the XML as S3 wrote it, odd headers, sub-resources),
and each records one normalised outcome in the side's transcript. Volatile values (dates, request ids,
upload and version ids, continuation tokens) are masked, and the side's own bucket names are written as
`<B>`, so the two sides are comparable although they use different buckets.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import boto3
import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from defusedxml import ElementTree

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: Response fields that differ on every call or between two buckets of one owner, never between servers.
VOLATILE = frozenset({
    "LastModified", "Initiated", "CreationDate", "UploadId", "VersionId", "RequestCharged", "HostId", "RequestId",
    "Expiration", "ContinuationToken", "NextContinuationToken", "UploadIdMarker", "NextUploadIdMarker",
    "VersionIdMarker", "NextVersionIdMarker", "BucketArn",
})
#: A multipart ETag: its hash depends on how the parts were cut, so only its form and part count are compared
#: (the bytes themselves are compared by the GET's body).
MULTIPART_ETAG = re.compile(r'^("?)[0-9a-f]{32}-(\d+)("?)$')
#: Identities: present where S3 writes them, but the proxy's own multipart state names its client.
OWNERS = frozenset({"Owner", "Initiator"})
#: Response fields an upstream leaves out where S3 writes them, per boto3 operation, at any depth of the
#: response (compared on the other upstream).
UPSTREAM_GAPS = {
    # Ceph 16 has no flexible checksums: it neither verifies nor echoes x-amz-checksum-* (S3 and the proxy do).
    "rgw": {"put_object": ("ChecksumCRC32", "ChecksumSHA256"), "upload_part": ("ChecksumCRC32",)},
    # moto writes no ChecksumAlgorithm in v1 listings and does not echo a v2 ContinuationToken (S3 does both).
    "moto": {"list_objects": ("ChecksumAlgorithm",), "list_objects_v2": ("ContinuationToken",)},
}


def _without(value: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


@dataclass
class Case:
    """One conformance case: `run(side)`; `mode` is the proxy it goes through; `exclude` maps an upstream
    kind to the reason its own answer is wrong (the case is not generated for that upstream)."""

    name: str
    run: Callable[[Side], None]
    operations: tuple[str, ...]
    mode: str = "passthrough"
    exclude: dict[str, str] = field(default_factory=dict)
    buckets: tuple[str, ...] = ("a",)


CASES: list[Case] = []
#: Counts of the session's comparisons (for the report).
STATS = {"cases": 0, "operations": 0, "requests": 0, "differing": 0}


def case(*operations: str, mode: str = "passthrough", exclude: dict[str, str] | None = None,
         buckets: tuple[str, ...] = ("a",)):
    """Register a case; `operations` names the S3 operations it exercises (for the count in the report);
    `buckets` are the logical buckets it uses (created beforehand unless their name starts with "new")."""

    def register(function: Callable[[Side], None]) -> Callable[[Side], None]:
        CASES.append(Case(function.__name__.removeprefix("case_"), function, operations, mode, exclude or {},
                          buckets))
        return function

    return register


@dataclass
class Entry:
    label: str
    request: str
    outcome: Any


@dataclass
class Side:
    """One way of reaching the upstream: directly, or through the proxy."""

    role: str  # "upstream" or "proxy"
    kind: str  # the upstream's kind: "moto" or "rgw"
    endpoint: str
    access_key: str
    secret_key: str
    buckets: dict[str, str]  # logical name ("a", "b", ...) -> bucket name on this side
    key_prefix: str = ""
    transcript: list[Entry] = field(default_factory=list)
    #: A boto3 client straight to the upstream with its own keys, for set-up the proxy does not offer
    #: (e.g. PutBucketVersioning, which it answers 501); never for the requests being compared.
    admin: Any = None

    def __post_init__(self) -> None:
        self.s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        self.http = httpx.Client(timeout=60)

    def client(self, **config: Any):
        """Another boto3 client with this side's credentials (e.g. `signature_version="s3v4"`)."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))

    def bucket(self, name: str = "a") -> str:
        return self.buckets[name]

    def key(self, name: str) -> str:
        return self.key_prefix + name

    # -- recording --------------------------------------------------------------------------------------
    def _mask(self, value: Any) -> Any:
        if isinstance(value, dict):  # an empty string is the same as an absent field
            return {k: ("<masked>" if k in VOLATILE else "<owner>" if k in OWNERS else self._mask(v))
                    for k, v in sorted(value.items()) if v != ""}
        if isinstance(value, list | tuple):
            return [self._mask(v) for v in value]
        if isinstance(value, datetime.datetime):
            return "<date>"
        if isinstance(value, bytes):
            return "sha256:" + hashlib.sha256(value).hexdigest()
        if isinstance(value, str):
            for real in sorted(self.buckets.values(), key=len, reverse=True):
                value = value.replace(real, "<B>")
            if self.key_prefix:
                value = value.replace(self.key_prefix, "<K>").replace(quote(self.key_prefix, safe=""), "<K>")
            match = MULTIPART_ETAG.match(value)
            return f"{match[1]}<md5>-{match[2]}{match[3]}" if match else value
        return value

    def record(self, label: str, request: str, outcome: Any) -> None:
        self.transcript.append(Entry(label, self._mask(request), self._mask(outcome)))

    def note(self, label: str, value: Any) -> None:
        """Record a value the case computed (a hash, a listing) for comparison."""
        self.record(label, "", value)

    # -- boto3 ------------------------------------------------------------------------------------------
    def call(self, label: str, operation: str, *, keep: tuple[str, ...] | None = None,
             unless: dict[str, str] | None = None, ignore: dict[str, tuple[str, ...]] | None = None,
             **params: Any) -> dict | None:
        """Call a boto3 operation; record status and the response fields (Body as its SHA-256; only those
        in `keep` when given) or the error. `unless` maps an upstream kind that answers this request wrongly
        to why: on that upstream the request is sent by neither side. `ignore` maps an upstream kind to
        response fields it leaves out or writes wrongly (compared on the other upstreams only)."""
        if unless and self.kind in unless:
            return None
        request = f"{operation}({', '.join(f'{k}={v!r:.80}' for k, v in params.items() if k != 'Body')})"
        try:
            response = getattr(self.s3, operation)(**params)
        except ClientError as error:
            meta = error.response.get("ResponseMetadata", {})
            self.record(label, request, {"status": meta.get("HTTPStatusCode"),
                                         "code": error.response.get("Error", {}).get("Code")})
            return None
        ignored = (ignore or {}).get(self.kind, ())
        outcome = {k: v for k, v in response.items()
                   if k != "ResponseMetadata" and (keep is None or k in keep) and k not in ignored}
        outcome = _without(outcome, UPSTREAM_GAPS.get(self.kind, {}).get(operation, ()))
        if "Body" in outcome:
            outcome["Body"] = response["Body"].read()
            response["Body"] = outcome["Body"]
        if operation in ("get_object", "head_object") and "ChecksumMode" not in params:
            # S3 sends stored checksums only to a reader that asks (x-amz-checksum-mode); moto always does.
            outcome = {k: v for k, v in outcome.items() if not k.startswith("Checksum")}
        outcome["status"] = response["ResponseMetadata"]["HTTPStatusCode"]
        self.record(label, request, outcome)
        return response

    # -- raw signed HTTP ----------------------------------------------------------------------------------
    def url(self, bucket: str | None = None, key: str | None = None, query: str = "") -> str:
        path = "/" if bucket is None else f"/{bucket}" + ("" if key is None else "/" + quote(key, safe="/~"))
        return f"{self.endpoint}{path}" + (f"?{query}" if query else "")

    def send(self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"",
             sign: bool = True) -> httpx.Response:
        headers = dict(headers or {})
        if sign:
            headers.setdefault("x-amz-content-sha256", hashlib.sha256(body).hexdigest())
            request = AWSRequest(method=method, url=url, data=body, headers=headers)
            S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", "us-east-1").add_auth(request)
            headers = {k: v for k, v in request.headers.items()}
        encoded = {k: (v.encode() if isinstance(v, str) else v) for k, v in headers.items()}
        return self.http.request(method, url, headers=encoded, content=body)

    def raw(self, label: str, method: str, bucket: str | None = None, key: str | None = None, query: str = "",
            headers: dict[str, str] | None = None, body: bytes = b"", fields: tuple[str, ...] = (),
            response_headers: tuple[str, ...] = (), sign: bool = True,
            unless: dict[str, str] | None = None) -> httpx.Response | None:
        """Send a signed request as written; record status, error code, the named XML fields (all their
        occurrences, in order) and the named response headers (as raw bytes decoded as UTF-8).
        `unless`: as for :meth:`call`."""
        if unless and self.kind in unless:
            return None
        response = self.send(method, self.url(bucket, key, query), headers, body, sign)
        outcome: dict[str, Any] = {"status": response.status_code, "code": error_code(response)}
        for name in fields:
            outcome[name] = xml_values(response.content, name)
        for name in response_headers:
            outcome[name] = raw_header(response.headers, name)
        if response.headers.get("content-type", "").endswith("xml") and response.status_code >= 300:
            outcome["xml_error"] = bool(response.content.lstrip().startswith(b"<"))
        self.record(label, f"{method} {self.url(bucket, key, query).removeprefix(self.endpoint)}", outcome)
        return response


def raw_header(headers: httpx.Headers, name: str) -> str | None:
    """A response header's bytes as sent, decoded as UTF-8 (httpx itself decodes them as latin-1)."""
    return next((v.decode("utf-8", "replace") for k, v in headers.raw if k.decode().lower() == name.lower()), None)


def error_code(response: httpx.Response) -> str | None:
    """The S3 error code of an error response's XML body, or None (also for a body that is not XML)."""
    if response.status_code < 300 or not response.content.strip():
        return None
    try:
        root = ElementTree.fromstring(response.content)
    except ElementTree.ParseError:
        return "<not xml>"
    code = root.find("Code")
    return code.text if code is not None else f"<{root.tag}>"


def xml_values(content: bytes, name: str) -> list[str]:
    """The texts of every element called `name` (with or without the S3 namespace), in document order."""
    if not content.strip():
        return []
    root = ElementTree.fromstring(content)
    return [element.text or "" for element in root.iter() if element.tag in (name, S3_NS + name)]


def differences(upstream: Side, proxy: Side, count: bool = True) -> list[tuple[Entry | None, Entry | None]]:
    """The pairs of entries that differ (label or outcome), in order; `count` adds them to STATS."""
    pairs = []
    for index in range(max(len(upstream.transcript), len(proxy.transcript))):
        left = upstream.transcript[index] if index < len(upstream.transcript) else None
        right = proxy.transcript[index] if index < len(proxy.transcript) else None
        if left is None or right is None or (left.label, left.outcome) != (right.label, right.outcome):
            pairs.append((left, right))
    if count:
        STATS["cases"] += 1
        STATS["requests"] += len(upstream.transcript)
        STATS["differing"] += len(pairs)
        STATS["operations"] = len({operation for c in CASES for operation in c.operations})
    return pairs
