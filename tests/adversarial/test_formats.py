"""Formats that hide the picture (issue 9): the attacks a pict-rs client could make to get a caught picture
into the bucket, against a real proxy with its pipeline and the `test` pack in front of moto.

Every attack is judged by what is in the REAL bucket afterwards (moto listed directly, staging prefix
included), by the client's answer, by the quarantine list and by `bucketguard evidence verify`.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import skimage.data
from PIL import Image

from proxy.app import build_app
from proxy.config import load_config
from proxy.screening.hashing import frame_hashes_sync, pdq_hash
from proxy.screening.hashlists import builtin_test_list
from proxy.screening.policy import load_policy
from proxy.screening.sniff import sniff
from tests.support.media_attacks import (
    TURNS,
    encode,
    gzipped,
    hidden_in_animation,
    hidden_in_mp4,
    hidden_in_video,
    the_test_image,
    turned,
)
from tests.support.moto import S3Server
from tests.support.proxy import CLIENT_BUCKET, RunningProxy, new_bucket, start_in_process, write_config


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def guarded(moto_server: S3Server, test_pack_path: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """One proxy for the module: the real pipeline, the `test` pack in-process, a block list holding a
    photograph's PDQ, and the shipped defaults for undecodable and non-media bytes (no rule over the test
    pack's meaningless scores)."""
    tmp = tmp_path_factory.mktemp("formats")
    blocked = photo("rocket")
    block = tmp / "block.txt"
    block.write_text(f"pdq:{pdq_hash(encode(blocked, 'PNG')).hash_hex} known-bad-rocket\n")
    policy = tmp / "policy.toml"
    defaults = load_policy()
    policy.write_text(f'on_undecodable = "{defaults.on_undecodable}"\non_non_media = "{defaults.on_non_media}"\n'
                      'on_unavailable = "defer"\n')
    bucket = new_bucket(moto_server)
    config_path = write_config(tmp, moto_server, bucket,
                               inference=f'mode = "in-process"\npacks = ["{test_pack_path}"]\nprovider = "cpu"',
                               screening=f'policy = "{policy}"\nblock_lists = ["{block}"]')
    config = load_config(config_path)
    running = start_in_process(config, moto_server, bucket, config_path, app=build_app(config))
    running.blocked_picture = blocked  # type: ignore[attr-defined]
    running.landed = set()  # type: ignore[attr-defined]  # what may be in the bucket: benign uploads only
    yield running
    running.stop()


def put(proxy: RunningProxy, key: str, data: bytes, content_type: str | None, **extra: str) -> dict:
    kwargs = {"ContentType": content_type} if content_type is not None else {}
    return proxy.client().put_object(Bucket=CLIENT_BUCKET, Key=key, Body=data, **kwargs, **extra)


def refused(proxy: RunningProxy, key: str, data: bytes, content_type: str | None, **extra: str) -> dict:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        put(proxy, key, data, content_type, **extra)
    return info.value.response


def bucket_holds_only_benign(proxy: RunningProxy) -> None:
    """The real bucket, listed on moto itself (internal and staging prefixes included)."""
    assert set(proxy.upstream.keys(proxy.real_bucket, "")) == proxy.landed  # type: ignore[attr-defined]
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


def caught(proxy: RunningProxy) -> dict[str, dict]:
    result = cli("quarantine", "list", "--json", "--config", str(proxy.config_path))
    assert result.returncode == 0, result.stderr
    return {item["key"]: item for item in json.loads(result.stdout)}


def evidence_verifies(proxy: RunningProxy) -> None:
    result = cli("evidence", "verify", "--config", str(proxy.config_path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the test image in a later frame ---------------------------------------------------------------------

HIDING_PLACES = {
    "gif-frame-2": (lambda: hidden_in_animation("GIF"), "image/gif"),
    "apng-frame-2": (lambda: hidden_in_animation("PNG"), "image/png"),
    "webp-frame-2": (lambda: hidden_in_animation("WEBP"), "image/webp"),
    "mp4-frames-10-13": (hidden_in_mp4, "video/mp4"),
    # 400 frames, keyframes 250 apart: the picture is only in frames 300-320, between two keyframes
    "webm-between-keyframes": (lambda: hidden_in_video(the_test_image().resize((320, 240)), 400, range(300, 321),
                                                       container_format="webm", codec="libvpx", rate=25, gop=250),
                               "video/webm"),
}


def test_the_first_frame_alone_would_not_have_matched() -> None:
    """The attack is real: each container's first frame is innocent, only a later frame is the test image."""
    test_list = builtin_test_list()
    for name, (build, _) in HIDING_PLACES.items():
        frames = frame_hashes_sync(build())
        assert frames.decodable and len(frames.frames) >= 3, (name, frames.reason)
        assert test_list.match_pdq([frames.first], 31) is None, name
        assert test_list.match_pdq(frames.candidates(), 31) is not None, name


@pytest.mark.parametrize("place", list(HIDING_PLACES))
def test_test_image_in_a_later_frame_is_quarantined(guarded: RunningProxy, place: str) -> None:
    build, content_type = HIDING_PLACES[place]
    answer = refused(guarded, f"hidden/{place}", build(), content_type)
    assert answer["Error"]["Code"] == "AccessDenied"
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 403
    bucket_holds_only_benign(guarded)
    item = caught(guarded)[f"hidden/{place}"]
    assert (item["status"], item["category"], item["rule"]) == ("quarantined", "test", "builtin-test-image")
    evidence_verifies(guarded)


def test_a_benign_animation_and_video_land_byte_exact(guarded: RunningProxy) -> None:
    """The other side: frames are matched, not merely animations refused."""
    benign = photo("astronaut").resize((320, 320))
    for key, data, content_type in (("ok/anim.gif", hidden_in_animation("GIF", benign), "image/gif"),
                                    ("ok/clip.mp4", hidden_in_mp4(benign, frames=12, shown=range(4, 6)),
                                     "video/mp4")):
        put(guarded, key, data, content_type)
        guarded.landed.add(key)  # type: ignore[attr-defined]
        assert guarded.upstream.get(guarded.real_bucket, key) == data
    bucket_holds_only_benign(guarded)


# ---- turned and mirrored ---------------------------------------------------------------------------------

@pytest.mark.parametrize("turn", list(TURNS))
def test_turned_copies_of_the_test_image_and_of_a_blocked_picture_are_caught(guarded: RunningProxy,
                                                                               turn: str) -> None:
    blocked_picture = guarded.blocked_picture  # type: ignore[attr-defined]
    attacks = {f"turned/test-{turn}.jpg": (turned(the_test_image(), turn), "builtin-test-image"),
               f"turned/blocked-{turn}.png": (turned(blocked_picture, turn, "PNG"), "blocklist:block.txt")}
    for key, (data, _) in attacks.items():
        answer = refused(guarded, key, data, "image/jpeg")
        assert answer["Error"]["Code"] == "AccessDenied", key
    items = caught(guarded)
    assert {key: items[key]["rule"] for key in attacks} == {key: rule for key, (_, rule) in attacks.items()}
    bucket_holds_only_benign(guarded)


# ---- the declared type is a hint, never a gate ------------------------------------------------------------

ODD_TYPES = ["Image/PNG", "IMAGE/JPEG", "application/octet-stream", "video/mp4", "text/plain", "image/gif", None]


def test_odd_or_wrong_content_types_change_nothing(guarded: RunningProxy) -> None:
    """A re-encoded test image (not on any exact list: PDQ must find it) and the test image inside an MP4,
    each under every odd, wrong or missing type, are refused; the same benign photograph lands under each."""
    reencoded = encode(the_test_image(), "JPEG", quality=70)
    video = hidden_in_mp4()
    for index, content_type in enumerate(ODD_TYPES):
        for name, data in (("jpeg", reencoded), ("mp4", video)):
            answer = refused(guarded, f"typed/{name}-{index}", data, content_type)
            assert answer["Error"]["Code"] == "AccessDenied", (name, content_type)
    items = caught(guarded)
    assert {items[f"typed/{n}-{i}"]["rule"] for n in ("jpeg", "mp4") for i in range(len(ODD_TYPES))} == {
        "builtin-test-image"}
    benign = encode(photo("coffee"), "JPEG", quality=85)
    for index, content_type in enumerate(ODD_TYPES):
        put(guarded, f"typed/benign-{index}", benign, content_type)
        guarded.landed.add(f"typed/benign-{index}")  # type: ignore[attr-defined]
    bucket_holds_only_benign(guarded)
    evidence_verifies(guarded)


def test_the_cache_keeps_facts_about_bytes_only(guarded: RunningProxy) -> None:
    """The same bytes first arrive as a video, then as an image, then as octet-stream: one scan, one answer;
    the cached entry holds the frames' hashes and media-ness from the bytes."""
    pipeline = guarded.app.app.state.bucketguard.extras["pipeline"]
    data = encode(photo("chelsea"), "PNG")
    put(guarded, "cache/as-video", data, "video/mp4")
    calls = pipeline.detector_calls
    for index, content_type in enumerate(("image/png", "application/octet-stream", "text/html")):
        put(guarded, f"cache/again-{index}", data, content_type)
    assert pipeline.detector_calls == calls, "the same bytes are decided from the cache, whatever their type"
    landed = {"cache/as-video", "cache/again-0", "cache/again-1", "cache/again-2"}
    guarded.landed.update(landed)  # type: ignore[attr-defined]
    bucket_holds_only_benign(guarded)

    import asyncio

    async def entry():  # the cache, read through its own interface on a connection of its own
        from proxy.screening.cache import VerdictCache
        from proxy.state import Database

        database = Database(load_config(guarded.config_path).database.url)
        try:
            return (await VerdictCache(database).lookup(hashlib.sha256(data).hexdigest()))[1]
        finally:
            await database.close()

    cached = asyncio.run(entry())
    assert cached is not None and cached.media and cached.frames is not None
    assert cached.frames.kind == "image" and len(cached.frames.candidates()) == 8
    assert cached.pdq == pdq_hash(data).hash_hex


# ---- encodings and bytes that are no media ----------------------------------------------------------------

def test_gzip_content_encoding_is_refused_before_anything_lands(guarded: RunningProxy) -> None:
    for encoding in ("gzip", "br", "deflate", "aws-chunked,gzip"):
        answer = refused(guarded, f"encoded/{encoding}", gzipped(generate_test_png()), "image/png",
                         ContentEncoding=encoding)
        assert answer["Error"]["Code"] == "InvalidArgument", encoding
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "Content-Encoding" in answer["Error"]["Message"]
    put(guarded, "encoded/identity", encode(photo("camera"), "PNG"), "image/png", ContentEncoding="identity")
    guarded.landed.add("encoded/identity")  # type: ignore[attr-defined]
    bucket_holds_only_benign(guarded)
    assert not any(key.startswith("encoded/") for key in caught(guarded))


def test_a_gzip_multipart_upload_is_refused_at_create(guarded: RunningProxy) -> None:
    """CreateMultipartUpload carries the landed object's encoding (the parts do not): refused there."""
    s3 = guarded.client()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.create_multipart_upload(Bucket=CLIENT_BUCKET, Key="encoded/multipart", ContentType="image/png",
                                   ContentEncoding="gzip")
    assert info.value.response["Error"]["Code"] == "InvalidArgument"
    assert guarded.upstream.multipart_uploads(guarded.real_bucket) == []
    bucket_holds_only_benign(guarded)


def generate_test_png() -> bytes:
    from proxy.screening.testimage import generate_png

    return generate_png()


UNKNOWN_BYTES = {
    "random": bytes(range(256)) * 40,
    "text": b"just some words, no picture\n" * 20,
    "pdf": b"%PDF-1.7\n" + b"0" * 500,
    "gzip-of-test-image": gzipped(generate_test_png()),
    "zip": b"PK\x03\x04" + b"\x00" * 300,
}


def test_unknown_bytes_are_kept_out_and_recorded_by_default(guarded: RunningProxy) -> None:
    assert load_policy().on_non_media == "reject"
    for name, data in UNKNOWN_BYTES.items():
        assert sniff(data) == "unknown", name
        answer = refused(guarded, f"unknown/{name}", data, "image/png")
        assert answer["Error"]["Code"] == "AccessDenied", name
    items = caught(guarded)
    assert {(items[f"unknown/{name}"]["status"], items[f"unknown/{name}"]["rule"]) for name in UNKNOWN_BYTES} == {
        ("rejected", "on_non_media")}
    # pict-rs's 0-byte health check still lands: the EmptyObject step lets it pass without running a detector
    put(guarded, "health-check", b"", "application/octet-stream")
    guarded.landed.add("health-check")  # type: ignore[attr-defined]
    bucket_holds_only_benign(guarded)
    evidence_verifies(guarded)


def test_an_operator_may_loosen_non_media(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('on_non_media = "flag"\n')
    assert load_policy(policy).on_non_media == "flag"
    assert load_policy(policy).decide({}, media=False).action == "flag"


# ---- units: the sniffer and the per-frame hashes ----------------------------------------------------------

def test_sniff_names_media_by_its_bytes() -> None:
    png = generate_test_png()
    assert sniff(png) == "image"
    assert sniff(encode(the_test_image(), "JPEG")) == "image"
    assert sniff(hidden_in_animation("WEBP")) == "image"
    assert sniff(hidden_in_animation("GIF")) == "image"
    assert sniff(hidden_in_mp4(frames=3, shown=range(1))) == "video"
    assert sniff(b"") == "unknown"
    assert sniff(b"hello") == "unknown"


def test_frame_hashes_hold_eight_orientations_per_frame() -> None:
    frames = frame_hashes_sync(hidden_in_animation("GIF"))
    assert frames.kind == "animation" and len(frames.frames) == 3
    assert all(len(variants) == 8 for variants in frames.frames)
    assert len({p.hash_hex for p in frames.frames[1]}) == 8, "eight different orientations"
    again = type(frames).from_json(frames.to_json())
    assert again == frames
    still = frame_hashes_sync(io.BytesIO(generate_test_png()).getvalue())
    assert still.first is not None and still.first.hash_hex == builtin_test_list().pdq_hex[0]


def test_the_cache_migration_forgets_entries_made_from_the_declared_type(tmp_path: Path) -> None:
    """A database from before per-frame hashes: its entries (media-ness from the Content-Type, PDQ of frame 1)
    are dropped by the migration, and the new column holds the frames' hashes."""
    import asyncio

    from proxy.screening.cache import CachedScan, VerdictCache
    from proxy.state import Database

    data = hidden_in_animation("GIF")
    sha256 = hashlib.sha256(data).hexdigest()

    async def run() -> None:
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        try:
            await database.migrate()
            async with database.engine.begin() as conn:  # turn it into a database of the old schema
                await conn.exec_driver_sql("DELETE FROM schema_migrations WHERE id = 'verdict-cache-0002-frames'")
                await conn.exec_driver_sql("ALTER TABLE verdict_cache DROP COLUMN frames_json")
                await conn.exec_driver_sql(
                    "INSERT INTO verdict_cache (sha256, packs_json, signals_json, pdq, undecodable, media, "
                    f"updated_at) VALUES ('{sha256}', '{{}}', '{{}}', '', 0, 0, 'then')")
            assert await database.migrate() == ["verdict-cache-0002-frames"]
            cache = VerdictCache(database)
            assert await cache.lookup(sha256) == (False, None)
            frames = frame_hashes_sync(data)
            await cache.put(sha256, CachedScan({"test": "1"}, {"nsfw": 0.1}, frames, False, True))
            _, cached = await cache.lookup(sha256)
            assert cached is not None and cached.frames == frames and cached.media
            assert len(cached.frames.candidates()) == 3 * 8
        finally:
            await database.close()

    asyncio.run(run())


def test_matching_many_candidates_against_a_long_list_finds_the_closest() -> None:
    """800 candidates (100 frames x 8 orientations) against 5,000 entries: matched in bounded chunks, and the
    answer is the brute-force closest pair."""
    import random

    from proxy.screening.hashing import Pdq, hamming
    from proxy.screening.hashlists import HashList

    rng = random.Random(9)
    entries = [f"{rng.getrandbits(256):064x}" for _ in range(5000)]
    hash_list = HashList("long")
    for index, entry in enumerate(entries):
        hash_list.add("pdq", entry, f"entry-{index}")
    target = entries[4321]
    near = f"{int(target, 16) ^ 0b1011:064x}"  # three bits away
    candidates = [Pdq(f"{rng.getrandbits(256):064x}", 100) for _ in range(799)] + [Pdq(near, 100)]
    rng.shuffle(candidates)
    match = hash_list.match_pdq(candidates, 31)
    assert match is not None and (match.value, match.distance, match.label) == (target, 3, "entry-4321")
    # random 256-bit hashes sit ~128 bits apart: the planted pair is the closest; check against its neighbours
    assert min(hamming(c.hash_hex, e) for c in candidates[:50] for e in entries[:500]) > 31
    assert hash_list.match_pdq([Pdq(near, 10)], 31) is None, "low-quality hashes are never matched"
    assert hash_list.match_pdq([], 31) is None
