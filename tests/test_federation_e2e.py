"""Federation end to end: bucketguard instances on loopback, each with its own bucket on moto, its own state
and key, the `test` pack in-process as detectors; feeds pulled over real HTTP by the instances themselves.

A scans and publishes; B trusts A for safe and block with quorum 1; C needs two of {A, B} for known-safe.
Detector calls are counted on each instance's pipeline; what landed is read from the real bucket on moto.
The federation store (ingest, lookups, reliance records, distrust) is what these tests are about: each runs
with every instance on SQLite, then with every instance on a real PostgreSQL (`new_database`).
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import skimage.data
from PIL import Image

from proxy.federation.keys import SigningKey
from tests.support.cli import run_cli
from tests.support.postgres import run_sql
from tests.support.proxy import CLIENT_BUCKET

pytestmark = pytest.mark.slow  # several proxies with in-process detectors per test

POLICY = 'on_undecodable = "reject"\n[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\naction = "flag"\n'


@functools.cache  # the same few photographs in every run: encoded once
def encode(name: str, fmt: str = "PNG", size: tuple[int, int] | None = None, **kwargs) -> bytes:
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)  # in this process: the subject is what the commands read and change


def query(proxy, sql: str, **params) -> list[tuple]:
    """Rows from an instance's own state database (SQLite or PostgreSQL), as it wrote them."""
    return run_sql(proxy.database_url, sql, **params)


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pipeline_of(proxy):
    return proxy.app.app.state.bucketguard.extras["pipeline"]


def stored(proxy, peer: str, verdict: str = "clean") -> int:
    return query(proxy, "SELECT count(*) FROM federation_attestations WHERE peer = :peer AND verdict = :verdict "
                 "AND NOT revoked", peer=peer, verdict=verdict)[0][0]


class Fleet:
    """Starts instances with their own key, bucket, database and quarantine."""

    def __init__(self, proxy_factory, test_pack_path: Path, tmp_path: Path, new_database) -> None:
        self.factory = proxy_factory
        self.pack = test_pack_path
        self.tmp = tmp_path
        self.new_database = new_database
        self.keys: dict[str, SigningKey] = {}

    def key_file(self, name: str) -> Path:
        path = self.tmp / f"{name}.key"
        if name not in self.keys:
            self.keys[name] = SigningKey.generate()
            self.keys[name].save(path)
        return path

    def start(self, name: str, *, publish: tuple[str, ...] = ("clean", "confirmed"), peers: dict | None = None,
              safe_quorum: float = 1.0, policy: str = POLICY, block_lists: str = "", server: str = ""):
        policy_file = self.tmp / f"{name}-policy.toml"
        policy_file.write_text(policy)
        lines = ["[federation]", f'name = "{name}"', f'key_file = "{self.key_file(name)}"',
                 f"publish = {json.dumps(list(publish))}", "pull_interval_s = 0.2", f"safe_quorum = {safe_quorum}"]
        for peer, (proxy, trust, key_line) in (peers or {}).items():
            lines += [f"[federation.peers.{peer}]", f'url = "{proxy.endpoint}"',
                      f'key = "{key_line or self.keys[peer].public.line}"', f"trust = {json.dumps(list(trust))}"]
        screening = f'policy = "{policy_file}"' + (f'\nblock_lists = ["{block_lists}"]' if block_lists else "")
        database_url = self.new_database()
        proxy = self.factory(pipeline=True, inference=f'mode = "in-process"\npacks = ["{self.pack}"]',
                             screening=screening, server=server, extra="\n".join(lines) + "\n",
                             database_url=database_url)
        proxy.name = name
        proxy.database_url = database_url
        return proxy


@pytest.fixture
def fleet(proxy_factory, test_pack_path: Path, tmp_path: Path, new_database) -> Fleet:
    return Fleet(proxy_factory, test_pack_path, tmp_path, new_database)


def put(proxy, key: str, data: bytes) -> None:
    proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data, ContentType="image/png")


def test_known_safe_quorum_one_and_two(fleet: Fleet) -> None:
    """B lands A's clean bytes without a detector call; C (2 of A, B) runs its detector until both attested."""
    a = fleet.start("A")
    fleet.key_file("B")
    b = fleet.start("B", peers={"A": (a, ("safe", "block"), None)})
    c = fleet.start("C", peers={"A": (a, ("safe",), None), "B": (b, ("safe",), None)}, safe_quorum=2)
    one, two, three = encode("astronaut"), encode("coffee"), encode("chelsea")

    put(a, "one.png", one)
    put(a, "two.png", two)
    assert pipeline_of(a).detector_calls == 2
    wait_for(lambda: stored(b, "A") == 2 and stored(c, "A") == 2, "B and C to pull A's two attestations")

    calls = pipeline_of(b).detector_calls
    put(b, "from-a.png", one)
    assert pipeline_of(b).detector_calls == calls, "B trusts A with quorum 1: no detector call"
    assert b.upstream.get(b.real_bucket, "from-a.png") == one
    relied = query(b, "SELECT bucket, key, peers, rule, sources FROM federation_reliance")
    assert [(r[0], r[1], r[2], r[3]) for r in relied] == [(CLIENT_BUCKET, "from-a.png", ",A,", "federation:safe")]
    source = json.loads(relied[0][4])[0]
    assert source["peer"] == "A" and source["verdict"] == "clean" and source["token"].count(".") == 2

    calls = pipeline_of(c).detector_calls
    put(c, "two.png", two)
    assert pipeline_of(c).detector_calls == calls + 1, "only A attested: C runs its detector"

    put(b, "three.png", three)  # B scans it itself (nobody attested yet) and publishes
    put(a, "three.png", three)
    wait_for(lambda: stored(c, "A") == 3 and stored(c, "B") >= 1, "C to pull both attestations of three")
    calls = pipeline_of(c).detector_calls
    put(c, "three.png", three)
    assert pipeline_of(c).detector_calls == calls, "A and B both attested: known safe at C without a model"
    assert c.upstream.get(c.real_bucket, "three.png") == three
    relied = query(c, "SELECT peers FROM federation_reliance WHERE key = 'three.png'")
    assert relied == [(",A,B,",)]


def confirm_only_item(proxy) -> dict:
    listing = cli("quarantine", "list", "--json", "--config", str(proxy.config_path))
    assert listing.returncode == 0, listing.stderr
    caught = json.loads(listing.stdout)
    assert len(caught) == 1, caught
    done = cli("quarantine", "confirm", caught[0]["id"], "--config", str(proxy.config_path))
    assert done.returncode == 0, done.stderr
    return caught[0]


def test_confirmed_block_at_a_is_quarantined_for_review_at_b(fleet: Fleet, tmp_path: Path) -> None:
    """A block-listed upload confirmed by A's reviewer reaches B as a block: exact bytes and a re-encoded copy
    (PDQ) are refused and kept in B's quarantine for review; nothing lands in B's real bucket."""
    import hashlib

    bad = encode("rocket")
    block_list = tmp_path / "a-block.txt"
    block_list.write_text(f"sha256:{hashlib.sha256(bad).hexdigest()} known-bad\n")
    a = fleet.start("A", block_lists=str(block_list))
    fleet.key_file("B")
    b = fleet.start("B", peers={"A": (a, ("safe", "block"), None)}, server='admin_token = "admin-secret"')
    with pytest.raises(Exception) as refused:
        put(a, "bad.png", bad)
    assert "AccessDenied" in str(refused.value)
    assert stored(b, "A", "block") == 0, "not published before a reviewer confirmed it"
    confirm_only_item(a)
    wait_for(lambda: stored(b, "A", "block") == 1, "B to pull A's confirmed block")

    near = encode("rocket", "JPEG", size=(448, 299), quality=70)
    calls = pipeline_of(b).detector_calls
    for key, data in (("exact.png", bad), ("near.jpg", near)):
        with pytest.raises(Exception) as refused:
            put(b, key, data)
        assert "AccessDenied" in str(refused.value)
    assert pipeline_of(b).detector_calls == calls
    assert b.upstream_keys() == [], "nothing a peer blocked lands in B's bucket (staging included)"
    listing = json.loads(cli("quarantine", "list", "--json", "--config", str(b.config_path)).stdout)
    assert sorted((i["key"], i["rule"], i["status"]) for i in listing) == [
        ("exact.png", "federation:block", "quarantined"), ("near.jpg", "federation:block", "quarantined")]
    sources = query(b, "SELECT key, peers, action FROM federation_reliance ORDER BY key")
    assert sources == [("exact.png", ",A,", "quarantine"), ("near.jpg", ",A,", "quarantine")]

    # The review page shows the peer decisions and their sources, behind the admin token only.
    admin = {"Authorization": "Bearer admin-secret"}
    assert httpx.get(f"{b.endpoint}/admin/federation?format=json").status_code == 401
    shown = httpx.get(f"{b.endpoint}/admin/federation?format=json", headers=admin).json()
    assert sorted(r["key"] for r in shown) == ["exact.png", "near.jpg"]
    assert {s["peer"] for r in shown for s in r["sources"]} == {"A"}
    page = httpx.get(f"{b.endpoint}/admin/federation", headers=admin)
    assert page.status_code == 200 and "near.jpg" in page.text and "federation:block" in page.text
    item = next(i for i in listing if i["key"] == "near.jpg")
    behind = httpx.get(f"{b.endpoint}/admin/items/{item['id']}/federation", headers=admin).json()
    assert [r["key"] for r in behind] == ["near.jpg"] and behind[0]["sources"][0]["token"].count(".") == 2


def test_a_strict_instance_quarantines_on_a_lenient_peers_signals(fleet: Fleet) -> None:
    """A (lenient: no rule over the test pack's signals) allows and attests; S, whose policy has a threshold
    this image's signal crosses, quarantines the same bytes from A's numbers without running a model."""
    image = encode("horse")
    a = fleet.start("A")
    put(a, "horse.png", image)
    assert a.upstream.get(a.real_bucket, "horse.png") == image, "the lenient peer allowed it"
    token = query(a, "SELECT token FROM federation_outbox WHERE kind = 'attestation'")[0][0]
    from proxy.federation.keys import verify

    signals = verify(token, fleet.keys["A"].public)["signals"]
    name = sorted(signals)[0]
    strict = (f'[[rule]]\nname = "strict-{name}"\nwhen = {{ {name} = ">= {signals[name] - 1e-6!r}" }}\n'
              'action = "quarantine"\ncategory = "strict"\n')
    s = fleet.start("S", peers={"A": (a, ("safe",), None)}, policy=strict)
    wait_for(lambda: stored(s, "A") == 1, "S to pull A's attestation")
    with pytest.raises(Exception) as refused:
        put(s, "horse.png", image)
    assert "AccessDenied" in str(refused.value)
    assert pipeline_of(s).detector_calls == 0
    assert s.upstream_keys() == []
    listing = json.loads(cli("quarantine", "list", "--json", "--config", str(s.config_path)).stdout)
    assert [(i["key"], i["rule"], i["category"]) for i in listing] == [("horse.png", f"strict-{name}", "strict")]


def test_distrust_counts_at_once_and_rescan_rechecks_exactly_what_relied_on_it(fleet: Fleet) -> None:
    a = fleet.start("A")
    b = fleet.start("B", peers={"A": (a, ("safe",), None)})
    images = {name: encode(name) for name in ("astronaut", "camera", "coffee", "moon")}
    for name in ("astronaut", "camera", "coffee"):
        put(a, f"{name}.png", images[name])
    wait_for(lambda: stored(b, "A") == 3, "B to pull A's attestations")
    put(b, "astronaut.png", images["astronaut"])
    put(b, "camera.png", images["camera"])
    put(b, "own.png", images["moon"])  # nobody attested it: B's detector decides, nothing relies on A
    assert pipeline_of(b).detector_calls == 1

    distrust = cli("federation", "distrust", "A", "--config", str(b.config_path))
    assert distrust.returncode == 0, distrust.stderr
    assert "2 decisions relied on A" in distrust.stdout and "--relied-on A" in distrust.stdout
    put(b, "coffee.png", images["coffee"])
    assert pipeline_of(b).detector_calls == 2, "a distrusted peer stops counting at the next upload"

    scan = cli("scan", "--bucket", CLIENT_BUCKET, "--relied-on", "A", "--no-progress", "--json",
               "--config", str(b.config_path))
    assert scan.returncode == 0, scan.stdout + scan.stderr
    report = json.loads(scan.stdout)
    assert report["objects"] == 2 and report["outcomes"] == {"clean": 2}, report
    assert report["rechecked"] == 2
    assert query(b, "SELECT key FROM federation_reliance WHERE rechecked_at != '' ORDER BY key") == [
        ("astronaut.png",), ("camera.png",)]
    again = cli("federation", "distrust", "A", "--config", str(b.config_path))
    assert "0 decisions relied on A" in again.stdout
    trusted = cli("federation", "trust", "A", "--for", "safe", "--config", str(b.config_path))
    assert trusted.returncode == 0, trusted.stderr
    peers = json.loads(cli("federation", "peers", "--json", "--config", str(b.config_path)).stdout)
    assert [(p["name"], p["distrusted"], p["trust"]) for p in peers] == [("A", False, "safe")]
    horse = encode("horse")
    put(a, "horse.png", horse)
    wait_for(lambda: stored(b, "A") == 4, "B to pull A's next attestation")
    calls = pipeline_of(b).detector_calls
    put(b, "horse.png", horse)
    assert pipeline_of(b).detector_calls == calls, "trusted again: A's word counts again"
    assert query(b, "SELECT count(*) FROM federation_reliance WHERE key = 'horse.png'") == [(1,)]
