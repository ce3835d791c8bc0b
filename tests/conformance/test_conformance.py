"""Every case, in front of moto (signatures checked) and Ceph RGW: the proxy answers as the upstream does."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conformance import cases_buckets, cases_listing, cases_multipart, cases_objects, cases_subresources
from tests.conformance.conftest import UPSTREAM_FIXTURES, make_sides
from tests.conformance.harness import CASES, Case, Entry, differences

MODULES = (cases_buckets, cases_listing, cases_multipart, cases_objects, cases_subresources)  # they register CASES
#: The operations issue 10 lists; each must be exercised by at least one case.
REQUIRED = frozenset({
    "ListBuckets", "CreateBucket", "HeadBucket", "DeleteBucket", "GetBucketLocation", "GetBucketVersioning",
    "GetBucketAcl", "PutObject", "GetObject", "HeadObject", "DeleteObject", "DeleteObjects", "CopyObject",
    "UploadPartCopy", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListMultipartUploads", "ListParts", "ListObjects", "ListObjectsV2", "ListObjectVersions",
    "PutObjectTagging", "GetObjectTagging", "DeleteObjectTagging", "GetObjectAcl", "PutObjectAcl",
    "GetObjectAttributes",
})
#: Cases that write objects run a second time through the proxy with its real screening pipeline, whose
#: uploads are held back for a verdict and then written: they must answer the same.
SCREENED = ("put_get_head_delete", "checksums", "conditional_put", "utf8_metadata", "copy_object",
            "put_headers_kept", "multipart_complete_twice", "multipart_keeps_headers", "odd_keys", "tagging",
            "copy_tags_and_acl", "upload_part_copy", "conditional_complete", "multipart_errors",
            "limits_and_odd_arguments", "versioned_bucket")
PARAMS = [pytest.param(c, kind, id=f"{kind}-{c.name}") for c in CASES for kind in UPSTREAM_FIXTURES
          if kind not in c.exclude]
PARAMS += [pytest.param(dataclasses.replace(c, mode="screened"), kind, id=f"{kind}-{c.name}-screened")
           for c in CASES if c.name in SCREENED for kind in UPSTREAM_FIXTURES if kind not in c.exclude]


def _show(entry: Entry | None, other: Entry | None) -> str:
    """The outcome, or for two dicts only the keys whose values differ."""
    if entry is None:
        return "(no such request)"
    mine = entry.outcome
    if isinstance(mine, dict) and other is not None and isinstance(other.outcome, dict):
        keys = sorted(k for k in mine.keys() | other.outcome.keys() if mine.get(k) != other.outcome.get(k))
        shown = {k: mine.get(k, "(absent)") for k in keys}
        if "status" not in shown and "status" in mine:
            shown = {"status": mine["status"], **shown}
        return f"{shown!r:.1500}"
    return f"{mine!r:.1500}"


def describe(case: Case, kind: str, pairs: list[tuple[Entry | None, Entry | None]]) -> str:
    lines = [f"- **{case.name}** in front of {kind} ({', '.join(case.operations)}; {case.mode} mode)"]
    for upstream, proxy in pairs:
        entry = upstream or proxy
        lines.append(f"  - `{entry.label}`: request `{entry.request}`\n"
                     f"    - upstream: `{_show(upstream, proxy)}`\n    - proxy:    `{_show(proxy, upstream)}`")
    return "\n".join(lines) + "\n"


def test_every_listed_operation_is_compared() -> None:
    covered = {operation for c in CASES for operation in c.operations}
    assert covered >= REQUIRED, f"not compared: {sorted(REQUIRED - covered)}"


@pytest.mark.parametrize(("conformance_case", "kind"), PARAMS)
def test_proxy_answers_as_the_upstream(conformance_case: Case, kind: str, request: pytest.FixtureRequest,
                                       conformance_proxies, conformance_report: list[str]) -> None:
    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    proxy = conformance_proxies(kind, conformance_case.mode)
    direct, through = make_sides(kind, conformance_case.mode, upstream, proxy, conformance_case.buckets)
    conformance_case.run(direct)
    conformance_case.run(through)
    assert direct.transcript, "the case compared nothing"
    pairs = differences(direct, through)
    if pairs:
        conformance_report.append(describe(conformance_case, kind, pairs))
    assert not pairs, describe(conformance_case, kind, pairs)


def test_the_harness_sees_a_difference(moto_server_auth) -> None:
    """Guard against a comparison that cannot fail: two sides straight to moto whose buckets hold different
    bytes under one key must differ in the GET's body (and only there: bucket names and volatile fields are
    masked)."""
    from tests.conformance.harness import Side

    admin = moto_server_auth.client()
    sides = []
    for role, body in (("upstream", b"one"), ("proxy", b"two")):
        bucket = f"cf-harness-{role}"
        admin.create_bucket(Bucket=bucket)
        side = Side(role, "moto", moto_server_auth.endpoint, moto_server_auth.access_key, moto_server_auth.secret_key,
                    {"a": bucket})
        side.s3.put_object(Bucket=bucket, Key="k", Body=body)
        side.call("get", "get_object", Bucket=bucket, Key="k", keep=("Body", "ContentLength", "status"))
        side.call("head missing", "head_object", Bucket=bucket, Key="missing")
        sides.append(side)
    pairs = differences(*sides, count=False)
    assert [(left.label, left.outcome["Body"] != right.outcome["Body"]) for left, right in pairs] == [("get", True)]


@pytest.mark.parametrize("kind", list(UPSTREAM_FIXTURES))
def test_screened_mode_really_screens(kind: str, request: pytest.FixtureRequest, conformance_proxies) -> None:
    """The "-screened" runs above go through the real pipeline: the test image is refused there."""
    from botocore.exceptions import ClientError

    from proxy.screening.testimage import generate_png

    upstream = request.getfixturevalue(UPSTREAM_FIXTURES[kind])
    _, through = make_sides(kind, "screened", upstream, conformance_proxies(kind, "screened"), ("a",))
    with pytest.raises(ClientError) as refusal:
        through.s3.put_object(Bucket=through.bucket(), Key="t.png", Body=generate_png())
    assert refusal.value.response["Error"]["Code"] == "AccessDenied"
    assert upstream.keys(through.bucket()) == []
