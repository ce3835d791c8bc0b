"""What a peer's feed cannot do: tampered, wrongly keyed, expired, revoked and rotated-away entries are each
refused (or honoured) as designed and counted, over real HTTP between two instances; the feed's own bounds.

A's feed is prepared first (uploads, its own CLI for revoke and key rotation, and hand-made entries written
into its outbox the way a faulty or hostile publisher would), then B starts and pulls it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import httpx
import pytest

from proxy.federation.entries import Attestation, new_id
from proxy.federation.keys import SigningKey
from tests.support.proxy import CLIENT_BUCKET, PICTRS_KEY
from tests.test_federation_e2e import Fleet, cli, encode, fleet, pipeline_of, put, query, stored, wait_for

__all__ = ["fleet"]
pytestmark = pytest.mark.slow  # two or three proxies with in-process detectors per test


def add_entry(proxy, key: SigningKey, attestation: Attestation) -> None:
    query(proxy, "INSERT INTO federation_outbox (entry_id, kind, sha256, verdict, source, exp, revoked, token, "
                 "created_at) VALUES (:id, 'attestation', :sha256, :verdict, '', :exp, :revoked, :token, '')",
          id=attestation.id, sha256=attestation.sha256, verdict=attestation.verdict, exp=attestation.exp,
          revoked=False, token=key.sign(attestation.payload()))


def clean(data: bytes, *, iat: int, exp: int) -> Attestation:
    return Attestation(new_id(), "A", hashlib.sha256(data).hexdigest(), "", "clean", "detectors", "",
                       {"nsfw": 0.01}, {"test": "1"}, iat, exp)


def last_seq(proxy) -> int:
    return query(proxy, "SELECT max(seq) FROM federation_outbox")[0][0]


def counts(proxy, peer: str) -> dict[str, int]:
    return dict(query(proxy, "SELECT reason, count FROM federation_counts WHERE peer = :peer", peer=peer))


def cursor(proxy, peer: str) -> int:
    rows = query(proxy, "SELECT cursor FROM federation_peers WHERE name = :peer", peer=peer)
    return rows[0][0] if rows else -1


def test_tampered_wrong_key_expired_revoked_and_rotated_entries(fleet: Fleet) -> None:
    a = fleet.start("A")
    original = fleet.keys["A"]
    images = {name: encode(name) for name in ("astronaut", "camera", "coffee", "chelsea", "horse", "moon")}
    tampered, good, revoked, after_rotation = "astronaut", "camera", "coffee", "chelsea"
    for name in (tampered, good, revoked):
        put(a, f"{name}.png", images[name])

    entry_id, token = query(a, "SELECT entry_id, token FROM federation_outbox WHERE sha256 = :sha256",
                            sha256=hashlib.sha256(images[tampered]).hexdigest())[0]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["signals"] = {k: 0.0 for k in claims["signals"]}  # "make it look cleaner", keep the signature
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    query(a, "UPDATE federation_outbox SET token = :token WHERE entry_id = :id", token=f"{header}.{forged}.{signature}",
          id=entry_id)

    revoked_id = query(a, "SELECT entry_id FROM federation_outbox WHERE sha256 = :sha256",
                       sha256=hashlib.sha256(images[revoked]).hexdigest())[0][0]
    result = cli("federation", "revoke", revoked_id, "--config", str(a.config_path))
    assert result.returncode == 0, result.stderr
    now = int(time.time())
    add_entry(a, original, clean(images["horse"], iat=now - 100, exp=now - 10))  # expired
    add_entry(a, SigningKey.generate(), clean(images["moon"], iat=now, exp=now + 3600))  # someone else's key
    rotated = cli("federation", "keygen", "--rotate", "--config", str(a.config_path))
    assert rotated.returncode == 0, rotated.stderr
    new_line = rotated.stdout.strip()
    assert new_line.startswith("ed25519:") and new_line != original.public.line
    put(a, f"{after_rotation}.png", images[after_rotation])  # signed with the new key
    rotation = query(a, "SELECT token FROM federation_outbox WHERE kind = 'rotation'")[0][0]
    rotated_at = json.loads(base64.urlsafe_b64decode(rotation.split(".")[1] + "=="))["iat"]
    add_entry(a, original, clean(images["moon"], iat=rotated_at + 1, exp=now + 3600))  # old key after its rotation

    fleet.key_file("B")
    b = fleet.start("B", peers={"A": (a, ("safe", "block"), None)})
    wrong = fleet.start("W", peers={"A": (a, ("safe",), SigningKey.generate().public.line)})
    end = last_seq(a)
    wait_for(lambda: cursor(b, "A") == end and cursor(wrong, "A") == end, "B and W to read A's whole feed")

    assert counts(b, "A") == {"accepted": 3, "bad-signature": 1, "expired": 1, "unknown-key": 1, "revoked": 1,
                              "rotated": 1, "rotated-key": 1}
    assert query(b, "SELECT key FROM federation_peers WHERE name = 'A'")[0][0] == new_line
    assert stored(b, "A") == 2  # good and after_rotation; the revoked one is kept, marked revoked
    assert counts(wrong, "A") == {"unknown-key": end}, "a wrong configured key accepts nothing"
    assert stored(wrong, "A") == 0

    pipeline = pipeline_of(b)
    for name, runs_detector in ((good, False), (after_rotation, False), (tampered, True), (revoked, True),
                                ("moon", True), ("horse", True)):
        calls = pipeline.detector_calls
        put(b, f"{name}.png", images[name])
        assert pipeline.detector_calls == calls + runs_detector, name
    status = cli("federation", "status", "--json", "--config", str(b.config_path))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["peers"]["A"]["counts"]["bad-signature"] == 1


def test_feed_bounds_cache_and_errors(fleet: Fleet) -> None:
    a = fleet.start("A")
    put(a, "one.png", encode("astronaut"))
    base = f"{a.endpoint}/federation/v1"
    key = httpx.get(f"{base}/key").json()
    assert key["key"] == fleet.keys["A"].public.line and key["kid"] == fleet.keys["A"].public.kid
    page = httpx.get(f"{base}/feed", params={"after": 0, "limit": 10**9})
    assert page.status_code == 200 and len(page.json()["entries"]) == 1 and page.json()["more"] is False
    again = httpx.get(f"{base}/feed", params={"after": 0, "limit": 10**9},
                      headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    for params in ({"after": "x"}, {"after": -1}, {"limit": 0}):
        bad = httpx.get(f"{base}/feed", params=params)
        assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.get(f"{base}/feed", params={"after": 1}).json()["entries"] == []
    # What is shared: hashes, signals, packs, verdict; never the object key, the bucket or the uploader.
    text = page.text + json.dumps([json.loads(base64.urlsafe_b64decode(e["jws"].split(".")[1] + "=="))
                                   for e in page.json()["entries"]])
    for secret in ("one.png", CLIENT_BUCKET, a.real_bucket, PICTRS_KEY):
        assert secret not in text
    preview = cli("federation", "publish-preview", "--config", str(a.config_path))
    assert preview.returncode == 0 and "clean by detectors" in preview.stdout, preview.stderr


def test_nothing_is_published_by_default(fleet: Fleet) -> None:
    quiet = fleet.start("Q", publish=())
    put(quiet, "one.png", encode("astronaut"))
    assert quiet.upstream_keys() == ["one.png"]
    assert httpx.get(f"{quiet.endpoint}/federation/v1/feed").json()["entries"] == []
