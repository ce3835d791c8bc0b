"""SigV4 verification of incoming requests: the `Authorization` header form and the presigned query form.

The canonical request, string to sign and signature come from botocore's own signer
(:class:`botocore.auth.S3SigV4Auth`), fed with the request exactly as the client signed it: only the
headers named in `SignedHeaders`, the query re-encoded the way SigV4 defines it, and the payload hash the
client declared. Two things are done here by hand because botocore only signs and never verifies:
parsing the credential and the `Authorization` header, and deriving the signing key that aws-chunked
bodies need to check each chunk's signature.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from proxy.s3 import sigv2
from proxy.s3.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_PAYLOADS = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

SecretLookup = Callable[[str], "str | None"]
TokenLookup = Callable[[str], str]


@dataclass(frozen=True)
class AuthContext:
    """Who signed a verified request, and what chunk verification needs."""

    access_key: str
    region: str
    amz_date: str
    scope: str
    signing_key: bytes
    seed_signature: str
    #: The declared payload: a 64-hex SHA-256, UNSIGNED-PAYLOAD, or one of the STREAMING-* values.
    payload: str
    presigned: bool
    session_token: str = ""

    @property
    def streaming(self) -> bool:
        return self.payload in STREAMING_PAYLOADS

    @property
    def payload_sha256(self) -> str | None:
        """The hex SHA-256 the body must have, when the client signed one."""
        return self.payload if _is_hex_sha256(self.payload) else None


def _is_hex_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def check_payload_sha256(auth: AuthContext, actual_hex: str) -> None:
    """Raise XAmzContentSHA256Mismatch when a body's SHA-256 is not the one that was signed."""
    expected = auth.payload_sha256
    if expected is not None and not same_digest(expected.lower(), actual_hex.lower()):
        raise S3Error(
            "XAmzContentSHA256Mismatch",
            extra={"ClientComputedContentSHA256": expected, "S3ComputedContentSHA256": actual_hex},
        )


def same_digest(expected: str, given: str) -> bool:
    """Constant-time comparison of a computed digest with what the client sent (any text, compared as bytes:
    `hmac.compare_digest` raises on non-ASCII strings)."""
    return hmac.compare_digest(expected.encode("utf-8", "replace"), given.encode("utf-8", "replace"))


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """SigV4's derived key (four HMACs), the same for every request of one secret, day, region and service:
    kept for the next one (bounded; the region is checked before any signature, so one served region)."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def hmac_hex(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _aws_quote(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_query(raw_query: str, *, drop: str | None = None) -> str:
    """SigV4's canonical query: every name and value decoded once, re-encoded, sorted."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        name, _, value = part.partition("=")
        name, value = unquote(name), unquote(value)
        if name == drop:
            continue
        pairs.append((_aws_quote(name), _aws_quote(value)))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_uri_candidates(raw_path: str) -> list[str]:
    """The canonical URI: the path re-encoded as SigV4 defines it, and the path exactly as sent.

    S3 does not normalise or double-encode; clients differ in which characters they escape on the wire
    (`!`, `'`, `(`, `*`, ...), but all sign the strictly encoded form, except a few that sign what they send.
    """
    strict = quote(unquote(raw_path), safe="/-_.~")
    return [strict] if strict == raw_path else [strict, raw_path]


class _VerifyingSigner(S3SigV4Auth):
    """botocore's S3 signer, told exactly which headers, query and payload the client signed."""

    def __init__(self, credentials: Credentials, region: str, headers: HTTPHeaders, query: str,
                 payload: str) -> None:
        super().__init__(credentials, "s3", region)
        self._signed_headers = headers
        self._query = query
        self._payload = payload

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed_headers

    def canonical_query_string(self, request: AWSRequest) -> str:
        return self._query

    def payload(self, request: AWSRequest) -> str:
        return self._payload

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        # botocore derives the signing key again on every call; the cached one is the same key.
        key = signing_key(self.credentials.secret_key, request.context["timestamp"][:8], self._region_name,
                          self._service_name)
        return hmac_hex(key, string_to_sign)


def _compute_signature(*, method: str, uri: str, headers: HTTPHeaders, query: str, payload: str,
                       access_key: str, secret: str, region: str, amz_date: str) -> tuple[str, str]:
    signer = _VerifyingSigner(Credentials(access_key, secret), region, headers, query, payload)
    request = AWSRequest(method=method, url=f"http://verify{uri}", headers={})
    request.context["timestamp"] = amz_date
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    return signer.signature(string_to_sign, request), string_to_sign


def _parse_credential(credential: str, *, presigned: bool) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
    if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request" or len(parts[1]) != 8:
        raise S3Error(
            code,
            "The authorization header is malformed; the Credential is mal-formed; "
            'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
        )
    return parts[0], parts[1], parts[2], "/".join(parts[1:])


def _parse_amz_date(value: str, *, code: str) -> datetime:
    try:
        return datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise S3Error(code, f"Invalid date: {value!r}") from exc
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    if value.startswith("AWS "):
        raise S3Error("AccessDenied", "Signature version 2 is not supported; sign requests with SigV4.")
    if not value.startswith(ALGORITHM + " "):
        raise S3Error("AuthorizationHeaderMalformed", "Unsupported Authorization type; expected AWS4-HMAC-SHA256.")
    fields: dict[str, str] = {}
    for item in value[len(ALGORITHM) + 1:].split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            fields[name] = val.strip()
    try:
        credential, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
    except KeyError as exc:
        raise S3Error("AuthorizationHeaderMalformed",
                      f"The authorization header is malformed; missing {exc.args[0]}.") from exc
    return credential, [h for h in signed.lower().split(";") if h], signature


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    *,
    secrets: SecretLookup,
    region: str,
    now: datetime | None = None,
    max_skew_s: int = 900,
    max_expires_s: int = 7 * 24 * 3600,
    session_tokens: TokenLookup | None = None,
) -> AuthContext:
    """Verify a SigV4-signed request; returns who signed it or raises the S3Error S3 would answer."""
    now = now or datetime.now(UTC)
    header_map: dict[str, list[str]] = {}
    for name, value in headers:
        header_map.setdefault(name.lower(), []).append(value)
    query = _query_params(raw_query)
    if "X-Amz-Signature" in query or "X-Amz-Algorithm" in query:
        return _verify_presigned(method, raw_path, raw_query, query, header_map, secrets=secrets, region=region,
                                 now=now, max_skew_s=max_skew_s, max_expires_s=max_expires_s,
                                 session_tokens=session_tokens)
    if "Signature" in query and "AWSAccessKeyId" in query:  # boto3's default presigned URL
        access_key = sigv2.verify_presigned(method, raw_path, raw_query, query, header_map, secrets=secrets,
                                            now=now, max_expires_s=max_expires_s)
        if session_tokens is not None and session_tokens(access_key):
            _check_token(query.get("x-amz-security-token", ""), True, access_key, session_tokens)
        return AuthContext(access_key, region, now.strftime(AMZ_DATE_FORMAT), "", b"", "", UNSIGNED_PAYLOAD,
                           True)
    authorization = header_map.get("authorization")
    if not authorization:
        raise S3Error("AccessDenied", "Anonymous access is not allowed; sign requests with SigV4.")
    credential, signed_names, signature = _parse_authorization(authorization[0])
    access_key, scope_date, scope_region, scope = _parse_credential(credential, presigned=False)
    if "host" not in signed_names:
        raise S3Error("AuthorizationHeaderMalformed", "The host header must be signed.")
    date_values = header_map.get("x-amz-date") or header_map.get("date")
    if not date_values:
        raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    amz_date_text = date_values[0]
    when = _parse_amz_date(amz_date_text, code="AccessDenied")
    amz_date = when.strftime(AMZ_DATE_FORMAT)
    payload = (header_map.get("x-amz-content-sha256") or [""])[0]
    if not payload:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if payload not in STREAMING_PAYLOADS and payload != UNSIGNED_PAYLOAD and not _is_hex_sha256(payload):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                      "STREAMING-* or a hex SHA-256.")
    secret = _lookup(secrets, access_key)
    _check_scope(scope_region, region, scope_date, amz_date, presigned=False)
    if abs((now - when).total_seconds()) > max_skew_s:
        raise S3Error("RequestTimeTooSkewed", extra={
            "RequestTime": amz_date_text, "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "MaxAllowedSkewMilliseconds": str(max_skew_s * 1000)})
    token = _check_token(header_map.get("x-amz-security-token", [""])[0], "x-amz-security-token" in signed_names,
                         access_key, session_tokens)
    signed_headers = _signed_header_map(signed_names, header_map)
    key = signing_key(secret, scope_date, scope_region)
    _check_signature(method, raw_path, canonical_query(raw_query), signed_headers, payload, access_key, secret,
                     scope_region, amz_date, signature)
    return AuthContext(access_key, scope_region, amz_date, scope, key, signature, payload, False, token)


def _query_params(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        params.setdefault(unquote(name), unquote(value))
    return params


def _lookup(secrets: SecretLookup, access_key: str) -> str:
    secret = secrets(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": access_key})
    return secret


def _check_scope(scope_region: str, region: str, scope_date: str, amz_date: str, *, presigned: bool) -> None:
    code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
    if scope_region != region:
        raise S3Error(code, f"The authorization header is malformed; the region '{scope_region}' is wrong; "
                      f"expecting '{region}'", extra={"Region": region})
    if scope_date != amz_date[:8]:
        raise S3Error(code, "The authorization header is malformed; the credential date does not match "
                      "the request date.")


def _check_token(token: str, signed: bool, access_key: str, session_tokens: TokenLookup | None) -> str:
    expected = session_tokens(access_key) if session_tokens else ""
    if token and not signed:
        raise S3Error("AccessDenied", "The x-amz-security-token header must be signed.")
    if expected and not hmac.compare_digest(token.encode(), expected.encode()):
        raise S3Error("InvalidToken", "The provided token is malformed or otherwise invalid.")
    return token


def _signed_header_map(signed_names: list[str], header_map: dict[str, list[str]]) -> HTTPHeaders:
    signed = HTTPHeaders()
    for name in signed_names:
        values = header_map.get(name)
        if values is None:
            raise S3Error("AccessDenied", f"Header {name!r} is listed in SignedHeaders but was not sent.")
        for value in values:
            signed.add_header(name, value)
    return signed


def _check_signature(method: str, raw_path: str, query: str, headers: HTTPHeaders, payload: str, access_key: str,
                     secret: str, region: str, amz_date: str, signature: str) -> None:
    string_to_sign = ""
    for uri in canonical_uri_candidates(raw_path):
        expected, sts = _compute_signature(method=method, uri=uri, headers=headers, query=query, payload=payload,
                                           access_key=access_key, secret=secret, region=region, amz_date=amz_date)
        string_to_sign = string_to_sign or sts
        if same_digest(expected, signature.lower()):
            return
    raise S3Error("SignatureDoesNotMatch", extra={"AWSAccessKeyId": access_key, "StringToSign": string_to_sign})


def _verify_presigned(method: str, raw_path: str, raw_query: str, query: dict[str, str],
                      header_map: dict[str, list[str]], *, secrets: SecretLookup, region: str, now: datetime,
                      max_skew_s: int, max_expires_s: int, session_tokens: TokenLookup | None) -> AuthContext:
    code = "AuthorizationQueryParametersError"
    required = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                "X-Amz-Signature")
    missing = [name for name in required if name not in query]
    if missing:
        raise S3Error(code, f"Query-string authentication version 4 requires the {', '.join(missing)} parameters.")
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(code, "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    access_key, scope_date, scope_region, scope = _parse_credential(query["X-Amz-Credential"], presigned=True)
    try:
        expires = int(query["X-Amz-Expires"])
    except ValueError as exc:
        raise S3Error(code, "X-Amz-Expires should be a number") from exc
    if expires < 0 or expires > max_expires_s:
        # S3 answers an expiry beyond seven days, or a negative one, with 403.
        raise S3Error(code, f"X-Amz-Expires must be less than a week (in seconds) that is 604800; "
                      f"this proxy allows 0 to {max_expires_s}", status=403)
    when = _parse_amz_date(query["X-Amz-Date"], code=code)
    amz_date = when.strftime(AMZ_DATE_FORMAT)
    secret = _lookup(secrets, access_key)
    _check_scope(scope_region, region, scope_date, amz_date, presigned=True)
    if now < when - timedelta(seconds=max_skew_s):
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > when + timedelta(seconds=expires):
        raise S3Error("AccessDenied", "Request has expired", extra={
            "X-Amz-Expires": str(expires), "Expires": (when + timedelta(seconds=expires)).isoformat(),
            "ServerTime": now.isoformat()})
    signed_names = [h for h in query["X-Amz-SignedHeaders"].lower().split(";") if h]
    if "host" not in signed_names:
        raise S3Error(code, "The host header must be signed.")
    token = _check_token(query.get("X-Amz-Security-Token", ""), True, access_key, session_tokens)
    payload = (header_map.get("x-amz-content-sha256") or [UNSIGNED_PAYLOAD])[0]
    signature = query["X-Amz-Signature"]
    _check_signature(method, raw_path, canonical_query(raw_query, drop="X-Amz-Signature"),
                     _signed_header_map(signed_names, header_map), payload, access_key, secret, scope_region,
                     amz_date, signature)
    key = signing_key(secret, scope_date, scope_region)
    return AuthContext(access_key, scope_region, amz_date, scope, key, signature, payload, True, token)
