"""Property-based fuzzing (Hypothesis) of the S3 parsers a client reaches before anything is trusted:
SigV4 in both forms (header and presigned query), aws-chunked framing, chunk signatures and trailers, and the
XML bodies. Whatever the input, the only thing that escapes is the protocol's own error (S3Error), and the
valid baselines still verify, so the properties cannot hold by refusing everything. Every example runs under
a deadline, inputs are bounded, and the worst cases (endless header line, entity bombs, oversized documents)
are checked against a memory ceiling with tracemalloc.
"""

from __future__ import annotations

import hashlib
import hmac
import tracemalloc
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.s3 import xml
from proxy.s3.chunked import MAX_LINE_BYTES, AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    AuthContext,
    signing_key,
    verify,
)

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=2), derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
KEY, SECRET, REGION, HOST = "pictrs-key", "pictrs-secret-0123456789", "us-east-1", "localhost:9000"
SECRETS = {KEY: SECRET}.get


def only_s3_errors(call):
    """Run `call`; anything but a result or an S3Error fails the property."""
    try:
        return call()
    except S3Error:
        return None


# ---- SigV4, header form ---------------------------------------------------------------------------------

def signed_headers(method: str = "PUT", path: str = "/pictrs/a.png", query: str = "") -> list[tuple[str, str]]:
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(KEY, SECRET), "s3", REGION).add_auth(request)
    return [("host", HOST), *((k.lower(), v) for k, v in request.headers.items())]


def check_header_form(method: str, path: str, query: str, headers: list[tuple[str, str]]) -> AuthContext | None:
    return only_s3_errors(lambda: verify(method, path, query, headers, secrets=SECRETS, region=REGION))


def test_the_header_baseline_verifies() -> None:
    auth = check_header_form("PUT", "/pictrs/a.png", "", signed_headers())
    assert auth is not None and auth.access_key == KEY


header_names = st.sampled_from(["authorization", "x-amz-date", "x-amz-content-sha256", "host",
                                "x-amz-security-token", "date"])
texty = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
authorization_like = st.builds(
    lambda cred, signed, sig, junk: f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={signed}, "
                                    f"Signature={sig}{junk}",
    st.text(max_size=80) | st.just(f"{KEY}/20260101/{REGION}/s3/aws4_request"),
    st.text(max_size=60) | st.just("host;x-amz-content-sha256;x-amz-date"),
    st.text(alphabet="0123456789abcdefABCDEF", max_size=70), st.text(max_size=20))


@FUZZ
@given(replacements=st.lists(st.tuples(header_names, texty | authorization_like), max_size=4),
       method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "\x00"]),
       path=st.text(max_size=100).map(lambda p: "/" + p), query=st.text(max_size=200))
def test_mangled_header_form_raises_only_s3_errors(replacements, method, path, query) -> None:
    headers = dict(signed_headers())
    headers.update(replacements)
    auth = check_header_form(method, path, query, list(headers.items()))
    if auth is not None:  # only possible when nothing that was signed changed
        assert method == "PUT" and path == "/pictrs/a.png" and query == ""


@FUZZ
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_any_changed_byte_of_the_authorization_header_is_refused(position, byte) -> None:
    headers = dict(signed_headers())
    value = headers["authorization"]
    index = position % len(value)
    mutated = value[:index] + chr(byte) + value[index + 1:]
    headers["authorization"] = mutated
    auth = check_header_form("PUT", "/pictrs/a.png", "", list(headers.items()))
    if auth is not None:  # a change that keeps the meaning: case of the hex signature, white space
        assert "".join(mutated.lower().split()) == "".join(value.lower().split())


# ---- SigV4, presigned query form ------------------------------------------------------------------------

def presigned(method: str = "GET", path: str = "/pictrs/a.png", expires: int = 300) -> tuple[str, str]:
    request = AWSRequest(method=method, url=f"http://{HOST}{path}", headers={})
    S3SigV4QueryAuth(Credentials(KEY, SECRET), "s3", REGION, expires=expires).add_auth(request)
    return path, request.url.split("?", 1)[1]


def test_the_presigned_baseline_verifies() -> None:
    path, query = presigned()
    auth = only_s3_errors(lambda: verify("GET", path, query, [("host", HOST)], secrets=SECRETS, region=REGION))
    assert auth is not None and auth.presigned


presigned_names = st.sampled_from(["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                                   "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
                                   "X-Amz-Content-Sha256", "partNumber", "uploadId"])


@FUZZ
@given(changes=st.lists(st.tuples(presigned_names, texty | st.integers().map(str)), min_size=1, max_size=4),
       drop=st.lists(presigned_names, max_size=2), raw_suffix=st.text(max_size=50))
def test_mangled_presigned_query_raises_only_s3_errors(changes, drop, raw_suffix) -> None:
    path, query = presigned()
    params = dict(part.split("=", 1) for part in query.split("&"))
    for name in drop:
        params.pop(name, None)
    for name, value in changes:
        params[name] = quote(value, safe="")
    mangled = "&".join(f"{k}={v}" for k, v in params.items()) + raw_suffix
    auth = only_s3_errors(lambda: verify("GET", path, mangled, [("host", HOST)], secrets=SECRETS, region=REGION))
    assert auth is None or (dict(p.split("=", 1) for p in query.split("&"))["X-Amz-Signature"] in mangled)


@FUZZ
@given(raw=st.text(max_size=2000))
def test_arbitrary_query_strings_raise_only_s3_errors(raw) -> None:
    assert only_s3_errors(lambda: verify("GET", "/pictrs/a", raw, [("host", HOST)], secrets=SECRETS,
                                         region=REGION)) is None


# ---- aws-chunked -------------------------------------------------------------------------------------------

AMZ_DATE = "20260101T000000Z"
SCOPE = f"20260101/{REGION}/s3/aws4_request"
SEED = "a" * 64


def streaming_auth(payload: str) -> AuthContext:
    return AuthContext(KEY, REGION, AMZ_DATE, SCOPE, signing_key(SECRET, "20260101", REGION), SEED, payload, False)


def chunk_signature(auth: AuthContext, previous: str, data: bytes) -> str:
    text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", AMZ_DATE, SCOPE, previous, EMPTY_SHA256,
                      hashlib.sha256(data).hexdigest()])
    return hmac.new(auth.signing_key, text.encode(), hashlib.sha256).hexdigest()


def signed_body(auth: AuthContext, payload: bytes, sizes: list[int]) -> bytes:
    """An aws-chunked body as the SDKs frame it: signed chunks, then the empty final chunk."""
    pieces, start, previous = [], 0, auth.seed_signature
    for size in [*sizes, len(payload)]:
        chunk = payload[start:start + size]
        start += len(chunk)
        if not chunk:
            continue
        previous = chunk_signature(auth, previous, chunk)
        pieces.append(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(chunk), previous.encode(), chunk))
    final = chunk_signature(auth, previous, b"")
    pieces.append(b"0;chunk-signature=%s\r\n\r\n" % final.encode())
    return b"".join(pieces)


def decode(auth: AuthContext, body: bytes, cuts: list[int], **options) -> bytes | None:
    def run() -> bytes:
        decoder = AwsChunkedDecoder(auth, **options)
        out, last = bytearray(), 0
        for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
            out += decoder.feed(body[last:cut])
            last = cut
        decoder.finish()
        return bytes(out)

    return only_s3_errors(run)


@FUZZ
@given(payload=st.binary(max_size=4096), sizes=st.lists(st.integers(1, 1500), max_size=6),
       cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_signed_chunks_decode_exactly_however_they_are_split(payload, sizes, cuts) -> None:
    auth = streaming_auth(STREAMING_SIGNED)
    assert decode(auth, signed_body(auth, payload, sizes), cuts, decoded_length=len(payload)) == payload


@FUZZ
@given(payload=st.binary(min_size=1, max_size=2048), sizes=st.lists(st.integers(1, 700), max_size=4),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=4), st.integers(0, 3)),
                      min_size=1, max_size=3),
       cuts=st.lists(st.integers(min_value=0), max_size=4))
def test_mangled_signed_chunks_raise_only_s3_errors_and_never_yield_other_bytes(payload, sizes, edits, cuts) -> None:
    auth = streaming_auth(STREAMING_SIGNED)
    body = bytearray(signed_body(auth, payload, sizes))
    for position, insert, delete in edits:
        index = position % (len(body) + 1)
        body[index:index + delete] = insert
    decoded = decode(auth, bytes(body), cuts)
    assert decoded is None or decoded == payload, "a changed body must fail its chunk signatures"


@FUZZ
@given(raw=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=5),
       kind=st.sampled_from([STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER]),
       trailer=st.sampled_from(["", "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-checksum-crc32c"]))
def test_arbitrary_bytes_as_aws_chunked_raise_only_s3_errors(raw, cuts, kind, trailer) -> None:
    auth = streaming_auth(kind)
    if trailer and kind == STREAMING_SIGNED:
        assert only_s3_errors(lambda: AwsChunkedDecoder(auth, trailer_names=trailer)) is None
        return
    decode(auth, raw, cuts, trailer_names=trailer)


@FUZZ
@given(payload=st.binary(max_size=2048), chunk=st.integers(1, 900),
       trailer_lines=st.lists(st.tuples(st.text(max_size=30), st.text(max_size=60)), max_size=4),
       corrupt_checksum=st.booleans())
def test_unsigned_trailers_with_checksums(payload, chunk, trailer_lines, corrupt_checksum) -> None:
    import base64
    import zlib

    auth = streaming_auth(STREAMING_UNSIGNED_TRAILER)
    crc = zlib.crc32(payload) ^ (1 if corrupt_checksum else 0)
    pieces = [b"%x\r\n%s\r\n" % (len(payload[i:i + chunk]), payload[i:i + chunk])
              for i in range(0, len(payload), chunk)]
    trailers = "".join(f"{name}:{value}\r\n" for name, value in trailer_lines if "\r" not in name + value
                       and "\n" not in name + value and name.strip().lower() != "x-amz-checksum-crc32")
    body = (b"".join(pieces) + b"0\r\n" + trailers.encode("utf-8")
            + b"x-amz-checksum-crc32:" + base64.b64encode(crc.to_bytes(4, "big")) + b"\r\n\r\n")
    decoded = decode(auth, body, [], trailer_names="x-amz-checksum-crc32")
    if corrupt_checksum:
        assert decoded is None
    else:
        assert decoded == payload


def test_an_endless_chunk_header_line_is_refused_within_bounded_memory() -> None:
    decoder = AwsChunkedDecoder(streaming_auth(STREAMING_SIGNED))
    tracemalloc.start()
    try:
        refused = None
        for _ in range(2048):  # up to 128 MiB offered in 64 KiB pieces
            try:
                decoder.feed(b"f" * 65536)
            except S3Error as exc:
                refused = exc
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused is not None and refused.code == "InvalidRequest"
    assert peak < MAX_LINE_BYTES + 4 * 65536


# ---- XML bodies -----------------------------------------------------------------------------------------

tag = st.sampled_from(["CompleteMultipartUpload", "Part", "PartNumber", "ETag", "Delete", "Object", "Key",
                       "VersionId", "Quiet", "x", "s3:Part"])


def elements(depth: int = 3):
    text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40).map(
        lambda t: t.replace("&", "&amp;").replace("<", "&lt;"))
    if depth == 0:
        return text
    return st.one_of(text, st.builds(lambda t, kids: f"<{t}>{''.join(kids)}</{t}>", tag,
                                     st.lists(elements(depth - 1), max_size=4)))


prologs = st.sampled_from([
    "", '<?xml version="1.0" encoding="UTF-8"?>',
    '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!DOCTYPE x SYSTEM "file:///etc/passwd">', '<!DOCTYPE x [<!ENTITY e SYSTEM "http://127.0.0.1:1/">]>',
])


@FUZZ
@given(prolog=prologs, root=elements(), junk=st.binary(max_size=50), as_bytes=st.booleans())
def test_xml_bodies_raise_only_s3_errors(prolog, root, junk, as_bytes) -> None:
    document = (prolog + root).encode("utf-8") + (junk if as_bytes else b"")
    parts = only_s3_errors(lambda: xml.parse_complete_multipart(document, 10000))
    if parts is not None:
        numbers = [n for n, _ in parts]
        assert numbers == sorted(set(numbers)) and all(1 <= n <= 10000 for n in numbers)
    deleted = only_s3_errors(lambda: xml.parse_delete(document, 1000))
    if deleted is not None:
        objects, quiet = deleted
        assert 1 <= len(objects) <= 1000 and all("Key" in o for o in objects) and isinstance(quiet, bool)
    only_s3_errors(lambda: xml.parse_document(document, ""))


@FUZZ
@given(raw=st.binary(max_size=4000))
def test_arbitrary_bytes_as_xml_raise_only_s3_errors(raw) -> None:
    for parse in (lambda: xml.parse_complete_multipart(raw), lambda: xml.parse_delete(raw),
                  lambda: xml.parse_document(raw, "Tagging")):
        only_s3_errors(parse)


def test_valid_documents_still_parse() -> None:
    complete = (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"e1\"</ETag></Part>"
                b"<Part><PartNumber>2</PartNumber><ETag>\"e2\"</ETag></Part></CompleteMultipartUpload>")
    assert xml.parse_complete_multipart(complete) == [(1, '"e1"'), (2, '"e2"')]
    assert xml.parse_delete(b"<Delete><Quiet>true</Quiet><Object><Key>a</Key></Object></Delete>") == (
        [{"Key": "a"}], True)


def test_entity_bombs_and_oversized_documents_are_refused_within_bounded_memory() -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
            + ']><Delete><Object><Key>&lol9;</Key></Object></Delete>').encode()
    huge = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 200_000 + b"</Delete>"
    many_parts = (b"<CompleteMultipartUpload>" + b"".join(
        b"<Part><PartNumber>%d</PartNumber><ETag>e</ETag></Part>" % (i + 1) for i in range(20_000))
        + b"</CompleteMultipartUpload>")
    tracemalloc.start()
    try:
        for document, parse in ((bomb, xml.parse_delete), (huge, xml.parse_delete),
                                (many_parts, xml.parse_complete_multipart)):
            try:
                parse(document)
            except S3Error as exc:
                assert exc.code in ("MalformedXML", "InvalidArgument")
            else:
                raise AssertionError(f"accepted a {len(document)}-byte hostile document")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


def test_amz_dates_far_from_now_raise_only_s3_errors() -> None:
    headers = dict(signed_headers())
    for value in ("99991231T235959Z", "00010101T000000Z", "Tue, 31 Dec 9999 23:59:59 GMT", "0", "\x00"):
        headers["x-amz-date"] = value
        assert check_header_form("PUT", "/pictrs/a.png", "", list(headers.items())) is None
    now = datetime.now(UTC)
    assert now.year > 2000
