"""The federation step in the real pipeline, against a real database (SQLite and PostgreSQL): the query it starts
with the decision (to overlap the perceptual step's decoding) is the only one it makes, and still a peer's "safe"
never outranks the test image: a peer attesting a cropped copy of it clean changes nothing, the bytes are quarantined as
the test image. (The query is counted by wrapping the real store method; nothing is mocked.)"""

from __future__ import annotations

import io
import time
from pathlib import Path

import skimage.data
from PIL import Image

from proxy.federation.entries import Attestation, new_id
from proxy.federation.feed import signed_page
from proxy.federation.ingest import Ingester
from proxy.federation.keys import SigningKey
from proxy.federation.step import PeerAttestations
from proxy.federation.store import FederationStore
from proxy.federation.trust import Rules
from proxy.screening.cache import VerdictCache
from proxy.screening.hashlists import HashLists
from proxy.screening.pipeline import Pipeline
from proxy.screening.policy import load_policy
from proxy.screening.testimage import generate_png
from proxy.state import Database
from proxy.storage.spool import SpooledBody
from tests.support.media_attacks import png_claiming


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def cropped_test_image() -> bytes:
    image = Image.open(io.BytesIO(generate_png()))
    w, h = image.size
    return jpeg(image.crop((round(w * .07), round(h * .03), round(w * .95), round(h * .92))))


async def attest_clean(store: FederationStore, shas: list[str]) -> None:
    """A trusted peer's feed saying these bytes are clean, verified and stored as the puller stores it."""
    key, now = SigningKey.generate(), int(time.time())
    await store.sync_peers([("peer", "http://127.0.0.1:9", key.public.line, key.public.kid, ("safe",), 1.0)])
    items = [{"seq": seq, "jws": key.sign(Attestation(new_id(), "peer", sha, "", "clean", "detectors", "",
                                                      {"nsfw": 0.01}, {"test": "1"}, now, now + 3600).payload())}
             for seq, sha in enumerate(shas, start=1)]
    page = signed_page(key, items, 0, False)
    peer = await store.peer("peer")
    assert peer is not None

    async def feed():
        yield page["entries"], page["sig"], 0

    await Ingester(store, max_per_peer=100).ingest_pages(peer, feed())


async def test_a_peers_clean_lands_its_bytes_but_never_the_test_image(db: Database, tmp_path: Path) -> None:
    store = FederationStore(db)
    photo, test_copy = jpeg(Image.fromarray(skimage.data.astronaut())), cropped_test_image()
    bodies = {name: SpooledBody.from_bytes(data) for name, data in (("photo", photo), ("test", test_copy))}
    await attest_clean(store, [body.sha256 for body in bodies.values()])
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[[rule]]\nname = "nudity"\nwhen = { nsfw = ">= 0.9" }\naction = "quarantine"\n')
    policy = load_policy(policy_file)
    step = PeerAttestations(store, policy, Rules(safe_quorum=1.0), pdq_max_distance=31)
    pipeline = Pipeline(policy=policy, hashlists=HashLists([], []), cache=VerdictCache(db), detectors=None,
                        federation=step)
    asked: list[str | None] = []
    usable = store.usable

    async def counted_usable(sha256=None, ids=()):  # the real query, counted
        asked.append(sha256)
        return await usable(sha256, ids)

    store.usable = counted_usable  # type: ignore[method-assign]
    try:
        landed = await pipeline.decide(bodies["photo"], "image/jpeg")
        assert (landed.action, landed.rule, landed.step) == ("allow", "federation:safe", "federation")
        assert asked == [bodies["photo"].sha256]  # asked once, by the query started with the decision
        caught = await pipeline.decide(bodies["test"], "image/jpeg")
        assert (caught.action, caught.rule, caught.step) == ("quarantine", "builtin-test-image", "testimage")
        assert pipeline.detector_calls == 0
    finally:
        await store.close()


RELY_AND_DIE = """
import asyncio, os, sys
from proxy.federation.store import FederationStore
from proxy.state import Database

async def main() -> None:
    store = FederationStore(Database(sys.argv[1]))
    await store.record_reliance("bucket", "relied/on.png", "cd" * 32, "allow", "federation:safe",
                                [{"peer": "peer", "id": "att1", "verdict": "clean", "basis": "detectors",
                                  "token": "t"}])
    print("recorded", flush=True)
    os._exit(9)  # no close, no dispose, no commit left to run: a crash right after the call returned

asyncio.run(main())
"""


async def test_a_reliance_record_is_committed_when_the_call_returns(db: Database, tmp_path: Path) -> None:
    """The act hook writes it before the bytes land: a process killed at once after the call keeps it, and another
    process's engine (the rescan's) selects it by peer. On SQLite through the hot path's own connection."""
    import subprocess
    import sys

    script = tmp_path / "rely.py"
    script.write_text(RELY_AND_DIE)
    result = subprocess.run([sys.executable, str(script), db.url], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert (result.returncode, result.stdout.strip()) == (9, "recorded"), result.stderr
    other = Database(db.url)
    try:
        relied = await FederationStore(other).relied_on("peer")
    finally:
        await other.close()
    assert [(r["bucket"], r["key"], r["sha256"], r["peers"]) for r in relied] == [
        ("bucket", "relied/on.png", "cd" * 32, ",peer,")]
    assert relied[0]["sources"][0]["id"] == "att1"


async def test_a_distrust_by_another_process_counts_at_the_next_lookup(db: Database) -> None:
    """The decision's attestation query (one thread hop on SQLite) joins the peers table every time: a distrust
    written through another engine, as the CLI writes it, stops the peer counting at once, and trusting it again
    brings it back; the rows it returns are the signed, verified ones."""
    store = FederationStore(db)
    sha = "ef" * 32
    await attest_clean(store, [sha])
    step = PeerAttestations(store, load_policy(None), Rules(safe_quorum=1.0), pdq_max_distance=31)
    cli_db = Database(db.url)
    cli = FederationStore(cli_db)
    try:
        before = await step.exact(sha)
        assert [(r["peer"], r["verdict"], r["trust"]) for r in before] == [("peer", "clean", frozenset({"safe"}))]
        assert await cli.set_trust("peer", distrusted=True, trust=None, weight=None, actor="admin")
        assert await step.exact(sha) == []
        assert await cli.set_trust("peer", distrusted=False, trust=None, weight=None, actor="admin")
        assert [r["att_id"] for r in await step.exact(sha)] == [before[0]["att_id"]]
    finally:
        await cli.close()
        await cli_db.close()
        await store.close()


async def test_a_peers_clean_never_lands_bytes_this_instance_cannot_decode(db: Database) -> None:
    """A PNG whose header claims 60000x60000 is over the local decode budget: its perceptual checks (test image,
    PDQ lists) cannot run here, so a peer's "clean" for its exact bytes does not land it; the policy's
    on_undecodable decides (reject by default), as without federation."""
    store = FederationStore(db)
    bomb = SpooledBody.from_bytes(png_claiming(60000, 60000))
    await attest_clean(store, [bomb.sha256])
    policy = load_policy(None)
    step = PeerAttestations(store, policy, Rules(safe_quorum=1.0), pdq_max_distance=31)
    pipeline = Pipeline(policy=policy, hashlists=HashLists([], []), cache=VerdictCache(db), detectors=None,
                        federation=step)
    try:
        assert [r["verdict"] for r in await step.exact(bomb.sha256)] == ["clean"]
        decision = await pipeline.decide(bomb, "image/png")
    finally:
        await store.close()
    assert (decision.action, decision.rule, decision.step) == ("reject", "on_undecodable", "undecodable")
