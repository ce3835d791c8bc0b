"""proxy.s3 alone: addressing, SigV4 verification of both forms, aws-chunked decoding, XML, errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.s3 import xml
from proxy.s3.addressing import resolve
from proxy.s3.chunked import AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import EMPTY_SHA256, AuthContext, signing_key, verify

AK, SK = "AKEXAMPLE", "secret/with+chars"
HOST = "127.0.0.1:9000"


def secrets(key: str) -> str | None:
    return SK if key == AK else None


def header_signed(method: str, url: str, body: bytes = b"", headers: dict | None = None,
                  region: str = "us-east-1") -> tuple[str, str, list[tuple[str, str]]]:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(Credentials(AK, SK), "s3", region).add_auth(request)
    parts = urlsplit(url)
    sent = [(k.lower(), v) for k, v in request.headers.items()] + [("host", parts.netloc)]
    return parts.path, parts.query, sent


@pytest.mark.parametrize("key", ["plain.png", "a b/c+d%e.png", "ünï/çødé ✓.webp", "double//slash", "q?x=1#frag",
                                 "(parens)!*'.jpg"])
def test_header_form_round_trip_and_tamper(key: str) -> None:
    from urllib.parse import quote

    url = f"http://{HOST}/pictrs/{quote(key, safe='/~')}?partNumber=2&uploadId=abc%2Bdef"
    path, query, headers = header_signed("PUT", url, b"body", {"content-type": "image/png"})
    auth = verify("PUT", path, query, headers, secrets=secrets, region="us-east-1")
    assert auth.access_key == AK and auth.payload == hashlib.sha256(b"body").hexdigest()
    assert resolve(HOST, path.encode(), ["localhost"]).key == key
    with pytest.raises(S3Error) as info:
        verify("PUT", path + "x", query, headers, secrets=secrets, region="us-east-1")
    assert info.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as info:
        verify("PUT", path, query.replace("partNumber=2", "partNumber=3"), headers, secrets=secrets,
               region="us-east-1")
    assert info.value.code == "SignatureDoesNotMatch"
    changed = [(k, "image/gif" if k == "content-type" else v) for k, v in headers]
    with pytest.raises(S3Error) as info:
        verify("PUT", path, query, changed, secrets=secrets, region="us-east-1")
    assert info.value.code == "SignatureDoesNotMatch"


def test_kept_signing_key_is_per_secret_day_and_region() -> None:
    """The derived key is kept between requests: it must still be the secret's own (a rotated secret refuses
    what the old one signed, on the same day), and for another day or region the key is derived afresh."""
    path, query, headers = header_signed("GET", f"http://{HOST}/pictrs/k")
    assert verify("GET", path, query, headers, secrets=secrets, region="us-east-1").access_key == AK
    assert verify("GET", path, query, headers, secrets=secrets, region="us-east-1").access_key == AK  # kept key
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, headers, secrets=lambda key: "rotated-secret", region="us-east-1")
    assert info.value.code == "SignatureDoesNotMatch"
    _, _, other_region = header_signed("GET", f"http://{HOST}/pictrs/k", region="garage")
    assert verify("GET", path, query, other_region, secrets=secrets, region="garage").region == "garage"
    with pytest.raises(S3Error) as info:  # the us-east-1 key never serves a garage-scoped signature
        verify("GET", path, query, [(k, v.replace("/garage/", "/us-east-1/")) for k, v in other_region],
               secrets=secrets, region="us-east-1")
    assert info.value.code == "SignatureDoesNotMatch"
    day = "20260101"
    expected = hmac.new(f"AWS4{SK}".encode(), day.encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        expected = hmac.new(expected, part.encode(), hashlib.sha256).digest()
    assert signing_key(SK, day, "us-east-1") == expected == signing_key(SK, day, "us-east-1")
    assert signing_key(SK, "20260102", "us-east-1") != expected


def test_header_form_errors() -> None:
    path, query, headers = header_signed("GET", f"http://{HOST}/pictrs/k")
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, headers, secrets=lambda k: None, region="us-east-1")
    assert info.value.code == "InvalidAccessKeyId"
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, headers, secrets=secrets, region="minio")
    assert info.value.code == "AuthorizationHeaderMalformed" and "expecting 'minio'" in info.value.message
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, headers, secrets=secrets, region="us-east-1",
               now=datetime.now(UTC) + timedelta(minutes=20))
    assert info.value.code == "RequestTimeTooSkewed"
    garbage = [(k, "AWS4-HMAC-SHA256 Credential=garbage, SignedHeaders=host, Signature=00") if k == "authorization"
               else (k, v) for k, v in headers]
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, garbage, secrets=secrets, region="us-east-1")
    assert info.value.code == "AuthorizationHeaderMalformed" and "Credential is mal-formed" in info.value.message
    v2 = [(k, "AWS AKEXAMPLE:c2lnbmF0dXJl") if k == "authorization" else (k, v) for k, v in headers]
    with pytest.raises(S3Error) as info:
        verify("GET", path, query, v2, secrets=secrets, region="us-east-1")
    assert info.value.code == "AccessDenied"


def test_session_token_must_match_when_configured() -> None:
    request = AWSRequest(method="GET", url=f"http://{HOST}/pictrs/k")
    S3SigV4Auth(Credentials(AK, SK, "token-1"), "s3", "us-east-1").add_auth(request)
    headers = [(k.lower(), v) for k, v in request.headers.items()] + [("host", HOST)]
    auth = verify("GET", "/pictrs/k", "", headers, secrets=secrets, region="us-east-1",
                  session_tokens=lambda k: "token-1")
    assert auth.session_token == "token-1"
    with pytest.raises(S3Error) as info:
        verify("GET", "/pictrs/k", "", headers, secrets=secrets, region="us-east-1",
               session_tokens=lambda k: "token-2")
    assert info.value.code == "InvalidToken"


def _rusty_s3_style_url(method: str, path: str, extra_signed: dict[str, str], expires: int, when: datetime) -> str:
    """A presigned URL built the way rusty-s3 does: query in its order, host plus pict-rs's headers signed."""
    date = when.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{date[:8]}/garage/s3/aws4_request"
    signed_names = sorted(["host", *extra_signed])
    params = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", f"{AK}/{scope}"),
              ("X-Amz-Date", date), ("X-Amz-Expires", str(expires)),
              ("X-Amz-SignedHeaders", ";".join(signed_names))]
    from urllib.parse import quote

    def enc(v: str) -> str:
        return quote(v, safe="-_.~")

    canonical_query = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(params))
    header_values = {"host": HOST, **extra_signed}
    canonical_headers = "".join(f"{name}:{header_values[name]}\n" for name in signed_names)
    canonical = "\n".join([method, path, canonical_query, canonical_headers, ";".join(signed_names),
                           "UNSIGNED-PAYLOAD"])
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(SK, date[:8], "garage"), string_to_sign.encode(), hashlib.sha256).hexdigest()
    return canonical_query + f"&X-Amz-Signature={signature}"


def test_presigned_form_as_rusty_s3_and_botocore_send_it() -> None:
    now = datetime.now(UTC)
    signed = {"content-type": "image/webp", "content-length": "1234"}
    query = _rusty_s3_style_url("PUT", "/pictrs/a%20b.webp", signed, 15, now)
    headers = [("host", HOST), *signed.items(), ("user-agent", "pict-rs")]
    auth = verify("PUT", "/pictrs/a%20b.webp", query, headers, secrets=secrets, region="garage", now=now)
    assert auth.presigned and auth.payload == "UNSIGNED-PAYLOAD"
    with pytest.raises(S3Error) as info:
        verify("PUT", "/pictrs/a%20b.webp", query, headers, secrets=secrets, region="garage",
               now=now + timedelta(seconds=16))
    assert info.value.code == "AccessDenied" and "expired" in info.value.message
    wrong_length = [(k, "999" if k == "content-length" else v) for k, v in headers]
    with pytest.raises(S3Error) as info:
        verify("PUT", "/pictrs/a%20b.webp", query, wrong_length, secrets=secrets, region="garage", now=now)
    assert info.value.code == "SignatureDoesNotMatch"

    request = AWSRequest(method="GET", url=f"http://{HOST}/pictrs/k%2Bplus")
    S3SigV4QueryAuth(Credentials(AK, SK, "sess"), "s3", "us-east-1", expires=60).add_auth(request)
    parts = urlsplit(request.url)
    auth = verify("GET", parts.path, parts.query, [("host", HOST), ("range", "bytes=0-")], secrets=secrets,
                  region="us-east-1")
    assert auth.session_token == "sess"
    with pytest.raises(S3Error) as info:
        verify("GET", parts.path, parts.query.replace("X-Amz-Expires=60", "X-Amz-Expires=999999999"),
               [("host", HOST)], secrets=secrets, region="us-east-1")
    assert info.value.code == "AuthorizationQueryParametersError"


def _auth_for_chunks(payload: str) -> AuthContext:
    date = "20261124T120000Z"
    scope = f"{date[:8]}/us-east-1/s3/aws4_request"
    return AuthContext(AK, "us-east-1", date, scope, signing_key(SK, date[:8], "us-east-1"), "ab" * 32, payload,
                       False)


def _signed_chunked_body(auth: AuthContext, data: bytes, chunk: int, trailer: dict[str, str] | None = None) -> bytes:
    out, previous = bytearray(), auth.seed_signature
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for piece in pieces:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", auth.amz_date, auth.scope, previous, EMPTY_SHA256,
                         hashlib.sha256(piece).hexdigest()])
        previous = hmac.new(auth.signing_key, sts.encode(), hashlib.sha256).hexdigest()
        out += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece + (b"\r\n" if piece else b"")
    if trailer is None:
        return bytes(out + b"\r\n")
    canonical = "".join(f"{k}:{v}\n" for k, v in trailer.items())
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", auth.amz_date, auth.scope, previous,
                     hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(auth.signing_key, sts.encode(), hashlib.sha256).hexdigest()
    out += canonical.replace("\n", "\r\n").encode() + f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return bytes(out)


def _feed(decoder: AwsChunkedDecoder, body: bytes, step: int) -> bytes:
    out = b"".join(decoder.feed(body[i:i + step]) for i in range(0, len(body), step))
    decoder.finish()
    return out


@pytest.mark.parametrize("step", [1, 7, 8192, 10**9])
def test_signed_chunks_decode_at_any_split(step: int) -> None:
    auth = _auth_for_chunks("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    data = bytes(range(256)) * 300
    body = _signed_chunked_body(auth, data, 8192)
    assert _feed(AwsChunkedDecoder(auth, decoded_length=len(data)), body, step) == data


def test_signed_chunks_with_a_bad_signature_or_length_fail() -> None:
    auth = _auth_for_chunks("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    data = b"x" * 20000
    body = bytearray(_signed_chunked_body(auth, data, 8192))
    body[200] ^= 1  # one payload bit
    with pytest.raises(S3Error) as info:
        _feed(AwsChunkedDecoder(auth), bytes(body), 4096)
    assert info.value.code == "SignatureDoesNotMatch"
    good = _signed_chunked_body(auth, data, 8192)
    with pytest.raises(S3Error) as info:
        _feed(AwsChunkedDecoder(auth, decoded_length=len(data) + 1), good, 4096)
    assert info.value.code == "IncompleteBody"
    with pytest.raises(S3Error) as info:
        _feed(AwsChunkedDecoder(auth), good[:-40], 4096)
    assert info.value.code == "IncompleteBody"


def test_signed_trailer() -> None:
    auth = _auth_for_chunks("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    data = b"hello trailer" * 1000
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body = _signed_chunked_body(auth, data, 4096, {"x-amz-checksum-crc32": crc})
    decoder = AwsChunkedDecoder(auth, trailer_names="x-amz-checksum-crc32", decoded_length=len(data))
    assert _feed(decoder, body, 100) == data
    bad = _signed_chunked_body(auth, data, 4096, {"x-amz-checksum-crc32": "AAAAAA=="})
    with pytest.raises(S3Error) as info:
        _feed(AwsChunkedDecoder(auth, trailer_names="x-amz-checksum-crc32"), bad, 100)
    assert info.value.code == "BadDigest"


def test_unsigned_trailer_checksum() -> None:
    auth = _auth_for_chunks("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    data = b"a" * 70000
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    body = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
            + f"x-amz-checksum-sha256:{checksum}\r\n\r\n".encode())
    decoder = AwsChunkedDecoder(auth, trailer_names="x-amz-checksum-sha256", decoded_length=len(data))
    assert _feed(decoder, body, 333) == data
    with pytest.raises(S3Error) as info:
        _feed(AwsChunkedDecoder(auth, trailer_names="x-amz-checksum-sha256"), body.replace(b"a", b"b", 1), 333)
    assert info.value.code == "BadDigest"
    with pytest.raises(S3Error) as info:
        AwsChunkedDecoder(auth).feed(b"z" * 5000)
    assert info.value.code == "InvalidRequest"


def test_addressing() -> None:
    assert resolve("pictrs.localhost:9000", b"/a%2Fb", ["localhost"]).key == "a/b"
    target = resolve("127.0.0.1:9000", b"/pictrs/", ["localhost"])
    assert (target.bucket, target.key) == ("pictrs", None)
    assert resolve("pictrs.localhost", b"/", ["localhost"]).key is None
    with pytest.raises(S3Error) as info:
        resolve("127.0.0.1", b"/pictrs/%FF", [])
    assert info.value.code == "InvalidURI"
    with pytest.raises(S3Error) as info:
        resolve("127.0.0.1", b"/a/b", [])
    assert info.value.code == "InvalidBucketName"


def test_errors_and_xml() -> None:
    error = S3Error("NoSuchKey", resource="/b/k<&>")
    assert error.status == 404
    assert b"<Code>NoSuchKey</Code>" in error.to_xml("RID") and b"k&lt;&amp;&gt;" in error.to_xml("RID")
    assert S3Error("SlowDown").headers["Retry-After"] == "1"
    with pytest.raises(S3Error) as info:
        xml.parse_complete_multipart(b"<CompleteMultipartUpload><Part><PartNumber>2</PartNumber><ETag>a</ETag>"
                                     b"</Part><Part><PartNumber>1</PartNumber><ETag>b</ETag></Part>"
                                     b"</CompleteMultipartUpload>")
    assert info.value.code == "InvalidPartOrder"
    with pytest.raises(S3Error) as info:
        xml.parse_complete_multipart(b"not xml")
    assert info.value.code == "MalformedXML"
