"""Federation units: keys and JWS, entry checking, the quorum rules, page verification, rate limit, the CLI's
and start-up checks' errors. The end-to-end proofs are in test_federation_e2e.py and test_federation_abuse.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.federation.entries import Attestation, EntryError, new_id, parse_entry
from proxy.federation.feed import RateLimit, signed_page
from proxy.federation.ingest import check_page
from proxy.federation.keys import BadSignature, KeyFileError, PublicKey, SigningKey, b64url, token_kid, verify
from proxy.federation.store import PeerRow
from proxy.federation.trust import Rules, judge
from proxy.screening.policy import parse_policy
from proxy.setup.checks import federation_problems

SHA = "ab" * 32
NOW = int(time.time())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


def test_key_line_roundtrip_and_bad_lines() -> None:
    key = SigningKey.generate()
    assert PublicKey.parse(key.public.line).kid == key.public.kid
    for bad in ("ssh-ed25519 AAAA", "ed25519:" + b64url(b"x" * 31), "ed25519:!!"):
        with pytest.raises(KeyFileError):
            PublicKey.parse(bad)


def test_jws_verifies_only_under_its_key_and_refuses_other_algorithms() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    token = key.sign({"v": 1})
    assert verify(token, key.public) == {"v": 1}
    with pytest.raises(BadSignature):
        verify(token, other.public)
    header = b64url(json.dumps({"alg": "EdDSA", "kid": key.public.kid}).encode())
    with pytest.raises(BadSignature):
        token_kid(header + "." + token.split(".", 1)[1])
    with pytest.raises(BadSignature):
        token_kid("x" * 20_000)


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "fed.key"
    first = cli("federation", "keygen", "--out", str(path))
    assert first.returncode == 0 and first.stdout.startswith("ed25519:")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SigningKey.load(path).public.line == first.stdout.strip()
    again = cli("federation", "keygen", "--out", str(path))
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        SigningKey.load(tmp_path / "junk.key")


def attestation(**changes) -> dict:
    now = int(time.time())  # at the call: the suite may reach this test long after collection
    payload = Attestation(new_id(), "A", SHA, "", "clean", "detectors", "", {"nsfw": 0.1}, {"p": "1"}, now,
                          now + 3600).payload()
    payload.update(changes)
    return payload


@pytest.mark.parametrize("changes", [
    {"v": 2}, {"t": "gossip"}, {"id": "xyz"}, {"sha256": "AB" * 32}, {"verdict": "maybe"}, {"basis": "vibes"},
    {"exp": NOW - 1}, {"iat": True}, {"signals": {"nsfw": float("inf")}}, {"signals": {f"s{i}": 0 for i in range(65)}},
    {"signals": {"bad name": 1}}, {"packs": {"p": 1}}, {"category": "x" * 65},
])
def test_entries_are_checked_strictly(changes: dict) -> None:
    with pytest.raises(EntryError):
        parse_entry(attestation(**changes))


def test_a_valid_attestation_parses() -> None:
    entry = parse_entry(attestation())
    assert isinstance(entry, Attestation) and entry.signals == {"nsfw": 0.1}


POLICY = parse_policy({"rule": [{"name": "strict", "when": {"nsfw": ">= 0.5"}, "action": "quarantine"}]})


def row(peer: str, *, verdict: str = "clean", nsfw: float = 0.1, weight: float = 1.0, trust=("safe",),
        sha: str = SHA, packs=None) -> dict:
    return {"peer": peer, "att_id": new_id(), "sha256": sha, "verdict": verdict, "basis": "detectors",
            "category": "", "signals": {"nsfw": nsfw}, "packs": packs if packs is not None else {"p": "1"},
            "token": "t", "trust": frozenset(trust), "weight": weight}


def test_safe_needs_the_quorum_of_weights_by_distinct_peers() -> None:
    rules = Rules(safe_quorum=2.0)
    assert judge([row("A")], POLICY, rules, sha256=SHA) is None
    assert judge([row("A"), row("A")], POLICY, rules, sha256=SHA) is None, "one peer twice is still one peer"
    both = judge([row("A"), row("B")], POLICY, rules, sha256=SHA)
    assert both is not None and both.action == "allow" and {s["peer"] for s in both.sources} == {"A", "B"}
    assert judge([row("A", weight=2.0)], POLICY, rules, sha256=SHA).action == "allow"
    assert judge([row("A", trust=("block",)), row("B")], POLICY, rules, sha256=SHA) is None
    assert judge([row("A", packs={}), row("B")], POLICY, rules, sha256=SHA) is None, "no packs, no signals to judge"
    only = Rules(safe_quorum=1.0, accept_packs=("q",))
    assert judge([row("A")], POLICY, only, sha256=SHA) is None, "packs this instance does not accept"
    assert judge([row("A", packs={"q": "2"})], POLICY, only, sha256=SHA).action == "allow"


def test_the_local_policy_decides_on_a_peers_numbers() -> None:
    decided = judge([row("A", nsfw=0.6)], POLICY, Rules(safe_quorum=1.0), sha256=SHA)
    assert decided is not None and (decided.action, decided.rule) == ("quarantine", "strict")
    assert "signals attested by A" in decided.reason


def test_a_peers_undecodable_is_judged_as_undecodable_here() -> None:
    strict = parse_policy({"on_undecodable": "quarantine", "rule": []})
    peer = row("A")
    peer["signals"] = {"undecodable": 1.0}
    decided = judge([peer], strict, Rules(safe_quorum=1.0), sha256=SHA)
    assert decided is not None and (decided.action, decided.rule) == ("quarantine", "on_undecodable")


def test_blocks_go_to_review_by_exact_or_perceptual_match_and_never_make_anything_safe() -> None:
    rules = Rules(safe_quorum=1.0, block_quorum=1.0)
    near = row("A", verdict="block", trust=("block",), sha="cd" * 32)
    decided = judge([near, row("B")], POLICY, rules, sha256=SHA)
    assert decided is not None and (decided.action, decided.rule) == ("quarantine", "federation:block")
    assert "PDQ" in decided.reason
    assert judge([row("A", verdict="block", trust=("safe",))], POLICY, Rules(safe_quorum=5), sha256=SHA) is None
    assert judge([row("B", sha="cd" * 32)], POLICY, rules, sha256=SHA) is None, "clean is bound to exact bytes"


def peer_row(key: SigningKey, cursor: int = 0) -> PeerRow:
    return PeerRow("A", "http://a", key.public.line, key.public.kid, {}, frozenset({"safe"}), 1.0, False, cursor, 0)


def test_a_signed_page_is_checked_once_and_a_tampered_one_entry_by_entry() -> None:
    key = SigningKey.generate()
    entries = [{"seq": i + 1, "jws": key.sign(attestation())} for i in range(3)]
    page = signed_page(key, entries, 0, False)
    checked = check_page(peer_row(key), page["entries"], time.time(), signature=page["sig"], after=0)
    assert len(checked.entries) == 3 and not checked.rejected and checked.last_seq == 3
    header, _payload, signature = entries[1]["jws"].split(".")
    forged = dict(entries[1], jws=f"{header}.{b64url(json.dumps(attestation(verdict='block')).encode())}.{signature}")
    tampered = [entries[0], forged, entries[2]]
    checked = check_page(peer_row(key), tampered, time.time(), signature=page["sig"], after=0)
    assert len(checked.entries) == 2 and checked.rejected == {"bad-signature": 1}
    replay = check_page(peer_row(key, cursor=3), page["entries"], time.time(), signature=page["sig"], after=0)
    assert replay.entries == [] and not replay.rejected


def test_rate_limit_is_a_bounded_token_bucket() -> None:
    limit = RateLimit(per_minute=3, max_clients=2)
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b") and limit.allow("c") and len(limit._buckets) == 2


def config_with(peers: dict, key_file: str = "") -> object:
    return parse_config({"clients": [{"access_key": "k", "secret_key": "s"}],
                         "federation": {"key_file": key_file, "peers": peers}}, environ={})


def test_startup_checks_name_the_bad_federation_key(tmp_path: Path) -> None:
    good = SigningKey.generate().public.line
    assert federation_problems(config_with({"A": {"url": "http://a", "key": good}})) == []
    problems = federation_problems(config_with({"A": {"url": "http://a", "key": "ed25519:short"}},
                                               key_file=str(tmp_path / "missing.key")))
    assert [p.key for p in problems] == ["federation.peers.A.key", "federation.key_file"]
    assert [p.key for p in federation_problems(config_with({"A": {"url": "ftp://a", "key": good}}))] == [
        "federation.peers.A.url"]
    assert [p.key for p in federation_problems(config_with({"a b": {"url": "http://a", "key": good}}))] == [
        "federation.peers.a b"]


def test_cli_refuses_an_unknown_peer_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bucketguard.toml"
    config.write_text(f'[[clients]]\naccess_key = "k"\nsecret_key = "s"\n[database]\n'
                      f'url = "sqlite+aiosqlite:///{tmp_path / "state.db"}"\n')
    (tmp_path / "state.db").touch()
    result = cli("federation", "distrust", "nobody", "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no peer 'nobody'" in result.stderr


def test_a_peer_removed_from_the_config_stops_counting(database_url: str) -> None:
    """Real state (SQLite and PostgreSQL): a stored attestation counts while its peer is configured, not after it
    is removed."""
    import asyncio

    from proxy.federation.ingest import Ingester
    from proxy.federation.store import FederationStore
    from proxy.state import Database

    key = SigningKey.generate()

    async def scenario() -> tuple[int, int, int]:
        db = Database(database_url)
        await db.migrate()
        store = FederationStore(db)
        peer = ("A", "http://a", key.public.line, key.public.kid, ("safe",), 1.0)
        await store.sync_peers([peer])
        entries = [{"seq": 1, "jws": key.sign(attestation())}]
        page = signed_page(key, entries, 0, False)
        await Ingester(store, max_per_peer=10).ingest(await store.peer("A"), page["entries"], signature=page["sig"])
        counted = len(await store.usable(SHA))
        await store.sync_peers([])
        removed = len(await store.usable(SHA))
        await store.sync_peers([peer])
        back = len(await store.usable(SHA))
        await store.close()
        await db.close()
        return counted, removed, back

    assert asyncio.run(scenario()) == (1, 0, 1)


def test_a_peer_cannot_store_more_than_its_quota(database_url: str) -> None:
    """Real state (SQLite and PostgreSQL): past max_attestations_per_peer, entries are refused and counted as
    over-quota, in the page that crosses the quota and in every later page (on PostgreSQL the stored total once
    stayed 0, so each new page had the whole quota again)."""
    import asyncio

    from proxy.federation.ingest import Ingester
    from proxy.federation.store import FederationStore
    from proxy.state import Database

    key = SigningKey.generate()

    async def scenario() -> tuple[int, dict]:
        db = Database(database_url)
        await db.migrate()
        store = FederationStore(db)
        await store.sync_peers([("A", "http://a", key.public.line, key.public.kid, ("safe",), 1.0)])
        ingester = Ingester(store, max_per_peer=2)
        for first in (1, 4):
            entries = [{"seq": first + i, "jws": key.sign(attestation())} for i in range(3)]
            page = signed_page(key, entries, first - 1, False)
            await ingester.ingest(await store.peer("A"), page["entries"], signature=page["sig"], after=first - 1)
        stored, counted = await store.attestation_count("A"), (await store.counts())["A"]
        await store.close()
        await db.close()
        return stored, counted

    assert asyncio.run(scenario()) == (2, {"accepted": 2, "over-quota": 4})
