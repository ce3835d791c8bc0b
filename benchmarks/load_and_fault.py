"""Load and faults: pict-rs-style clients upload a hostile mix while the proxy, the upstream and the inference
service are killed with SIGKILL at random moments and restarted; then the bucket is audited.

    .venv/bin/python benchmarks/load_and_fault.py [--seconds 180] [--clients 16] [--seed 1]

Processes (all on loopback): moto's S3 server; in front of it a TCP relay process that is the upstream's
front door; the inference service with the test pack; `bucketguard serve` (remote detectors; the shipped
policy's `on_unavailable = "defer"`, undecodable and non-media rejected; the test pack's signals only
flag). moto keeps its data only in memory, so killing it would wipe the bucket, which no real S3 does when
a node dies. An upstream kill is therefore a SIGKILL of the relay: requests in flight are cut and new ones
refused until it is back, as when an S3 node crashes, and the data stay, as S3's do.

Clients alternate pict-rs's two generations (presigned and header signing) and upload: generated photos
(JPEG, PNG, WebP, small animations), the built-in test image and its re-encodings, rotations, mirror and an
animation with it as the second frame (all must be stopped), corrupt files, a GIF that is slow to decode
(7999x7999 canvas, hundreds of 1-pixel frames) and multipart uploads of large PNGs.

At the end (everything restarted, deferred scans given time to finish) it checks, listing the bucket on moto
directly: every upload a client saw succeed is there byte-exact (or was caught later by a deferred scan);
nothing that had to be stopped is there; every object is in exactly one of scanned-clean, flagged,
quarantined (then not in the bucket) or pending; the evidence chain verifies. It prints the counts and exits
1 on any violation. Imports only product code, the standard library and the demo install (moto).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.export.test_pack import build as build_test_pack
from proxy.demo.pictrs_client import PictrsClient, PictrsError
from proxy.demo.servers import CLIENT_BUCKET, CLIENTS, PICTRS_KEY, free_port, start_moto_process, wait_healthy
from proxy.demo.servers import write_proxy_config as write_config
from proxy.screening.testimage import generate_png

TOKEN = "load-and-fault"
#: The shipped defaults for undecodable, non-media and unavailable; the test pack's untrained signals only
#: flag (what they say about generated photos means nothing), so objects also end flagged.
POLICY = """on_undecodable = "reject"
on_non_media = "reject"
on_unavailable = "defer"
[[rule]]
name = "detector-flag"
when = { clip_underage_margin = ">= 0.15" }
action = "flag"
"""
MIB = 1024 * 1024


# ---- the workload -----------------------------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(rng: random.Random, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth, unique picture: gradients and a few discs."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.2, 1.2) + y * rng.uniform(0.1, 0.9) + rng.randrange(255)) % 256
                     for _ in range(3)], axis=-1)
    for _ in range(rng.randrange(2, 6)):
        cx, cy, r = rng.randrange(w), rng.randrange(h), rng.randrange(10, 60)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = [rng.randrange(256) for _ in range(3)]
    return Image.fromarray(base.astype(np.uint8))


def slow_gif(rng: random.Random, frames: int = 400) -> bytes:
    """A few KB that claim a 7999x7999 canvas and hundreds of frames: slow to decode, by design."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", 7999, 7999, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    for _ in range(frames):
        x, y = rng.randrange(7999), rng.randrange(7999)
        out += b"\x21\xf9\x04\x04\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", x, y, 1, 1, 0)
        out += b"\x02\x02\x44\x01\x00"  # LZW: clear, pixel 0, end
    return bytes(out + b"\x3b")


@dataclass(frozen=True)
class Item:
    kind: str
    data: bytes
    content_type: str
    must_stop: bool = False
    multipart: bool = False


class Workload:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        test = Image.open(io.BytesIO(generate_png())).convert("RGB")
        cover = photo(random.Random(seed + 1), test.size)
        self.test_variants = [
            ("test-image", generate_png(), "image/png"),
            ("test-jpeg", encode(test, "JPEG", quality=85), "image/jpeg"),
            ("test-webp", encode(test, "WEBP", quality=80), "image/webp"),
            ("test-resized", encode(test.resize((test.width * 3 // 4, test.height * 3 // 4)), "PNG"), "image/png"),
            ("test-rot90", encode(test.rotate(90, expand=True), "PNG"), "image/png"),
            ("test-rot180", encode(test.rotate(180), "JPEG", quality=90), "image/jpeg"),
            ("test-rot270", encode(test.rotate(270, expand=True), "PNG"), "image/png"),
            ("test-mirror", encode(test.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), "image/png"),
            ("test-2nd-frame", encode(cover, "GIF", save_all=True, append_images=[test], duration=100, loop=0),
             "image/gif"),
            ("test-as-octet", generate_png(), "application/octet-stream"),
        ]
        self._big = photo(random.Random(seed + 2), (1600, 1400))
        self._lock = threading.Lock()

    def next(self) -> Item:
        with self._lock:
            rng = random.Random(self.rng.getrandbits(64))
        roll = rng.random()
        if roll < 0.50:
            fmt, mime = rng.choice([("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
            return Item("photo", encode(photo(rng), fmt, quality=85) if fmt != "PNG" else encode(photo(rng), fmt),
                        mime)
        if roll < 0.58:
            frames = [photo(rng, (120, 90)) for _ in range(3)]
            return Item("animation", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                            duration=80, loop=0), "image/gif")
        if roll < 0.73:
            kind, data, mime = rng.choice(self.test_variants)
            return Item(kind, data, mime, must_stop=True)
        if roll < 0.85:
            good = encode(photo(rng), "JPEG", quality=85)
            if rng.random() < 0.5:
                return Item("corrupt-truncated", good[: len(good) // 3], "image/jpeg")
            return Item("corrupt-garbage", b"\x89PNG\r\n\x1a\n" + rng.randbytes(4000), "image/png")
        if roll < 0.92:
            return Item("slow-gif", slow_gif(rng, rng.randrange(200, 500)), "image/gif")
        big = self._big.copy()
        big.putpixel((rng.randrange(big.width), rng.randrange(big.height)), (1, 2, 3))
        noise = np.frombuffer(rng.randbytes(big.width * 200 * 3), np.uint8).reshape(200, big.width, 3)
        big.paste(Image.fromarray(noise), (0, rng.randrange(big.height - 200)))
        return Item("multipart", encode(big, "PNG", compress_level=1), "image/png", multipart=True)


# ---- processes that get killed ----------------------------------------------------------------------------

def relay_main(listen: int, target: int) -> None:
    """The upstream's front door: forwards every connection to moto (this process is what gets killed)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: str  # a URL answering 200, or "tcp:PORT"
    log: Path
    process: subprocess.Popen | None = None
    kills: int = 0
    startups: list[float] = field(default_factory=list)

    def _spawn(self) -> None:
        # its own process group, so that a kill takes its helpers (decode workers) with it, as a crash would
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 120.0) -> None:
        began = time.monotonic()
        self._spawn()
        while time.monotonic() < began + timeout:
            if self.process.poll() is not None:
                time.sleep(0.5)  # the port may still be held by the killed one: try again
                self._spawn()
            elif (_listening(int(self.ready[4:])) if self.ready.startswith("tcp:") else _answers(self.ready)):
                self.startups.append(time.monotonic() - began)
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start; see {self.log}")

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


# ---- the run ----------------------------------------------------------------------------------------------

@dataclass
class Record:
    key: str
    kind: str
    sha256: str
    must_stop: bool
    outcome: str  # ok, refused, error
    detail: str = ""


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(index: int, endpoint: str, workload: Workload, run: Run, deadline: float) -> None:
    generation = "presigned" if index % 2 == 0 else "header"
    client = PictrsClient(endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation,
                          path_style=True, timeout_s=60)
    counter = 0
    try:
        while time.monotonic() < deadline:
            item = workload.next()
            counter += 1
            key = f"c{index:02d}/{counter:05d}-{item.kind}"
            try:
                if item.multipart:
                    client.put_multipart(key, item.data, item.content_type, part_bytes=5 * MIB + 512 * 1024,
                                         concurrency=2)
                else:
                    client.put(key, item.data, item.content_type)
                outcome, detail = "ok", ""
            except PictrsError as exc:
                outcome, detail = ("refused" if exc.status == 403 else "error"), f"{exc.status} {exc.code}"
            except (httpx.HTTPError, OSError) as exc:
                outcome, detail = "error", type(exc).__name__
                time.sleep(0.2)
            with run.lock:
                run.records.append(Record(key, item.kind, hashlib.sha256(item.data).hexdigest(), item.must_stop,
                                          outcome, detail))
    finally:
        client.close()


def chaos_loop(components: list[Component], rng: random.Random, stop_at: float, rounds: int) -> None:
    """`rounds` rounds in which each component is killed once, at random moments spread over the run; each
    comes back after a random down time, on its own thread, so the next kill does not wait for a slow start."""
    order: list[Component] = []
    restarts: list[threading.Thread] = []
    kills_left = rounds * len(components)
    gap = (stop_at - time.monotonic()) / (kills_left + 1)

    def bring_back(victim: Component, down_s: float) -> None:
        time.sleep(down_s)
        victim.start()

    while kills_left and time.monotonic() < stop_at:
        time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
        if time.monotonic() >= stop_at:
            break
        kills_left -= 1
        if not order:
            order = rng.sample(components, len(components))  # each one is hit in every round
        victim = order.pop()
        for thread in restarts:
            if thread.name == victim.name:
                thread.join()  # it must be up before it can be killed again
        victim.kill9()
        restarts = [t for t in restarts if t.is_alive()]
        thread = threading.Thread(target=bring_back, args=(victim, rng.uniform(0.3, 3.0)), name=victim.name)
        thread.start()
        restarts.append(thread)
    for thread in restarts:
        thread.join()


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(query).fetchall()


def open_pending(db: Path) -> int:
    return rows(db, "SELECT count(*) FROM pending_scans WHERE state IN ('unconfirmed', 'pending')")[0][0]


def audit(run: Run, moto, bucket: str, db: Path, config: Path) -> tuple[dict, list[str]]:
    s3 = moto.server.client()
    objects: dict[str, bytes] = {}
    for key in moto.server.keys(bucket):
        objects[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    pending = {(k, s) for k, s in rows(db, "SELECT key, sha256 FROM pending_scans "
                                           "WHERE state IN ('unconfirmed', 'pending')")}
    clean_rows = {(k, s) for k, s in rows(db, "SELECT key, sha256 FROM pending_scans WHERE outcome LIKE 'clean%'")}
    items = rows(db, "SELECT key, sha256, action, status FROM quarantine_items")
    flagged = {(k, s) for k, s, action, _ in items if action == "flag"}
    quarantined = {(k, s) for k, s, action, status in items if action == "quarantine"}
    stopped = {(k, s) for k, s, action, _ in items if action in ("quarantine", "reject")}
    scanned = {s for (s,) in rows(db, "SELECT sha256 FROM verdict_cache WHERE signals_json NOT IN ('', '{}')")}
    violations: list[str] = []
    states: Counter[str] = Counter()
    for key, data in objects.items():
        sha = hashlib.sha256(data).hexdigest()
        if key.startswith("_bucketguard/"):
            states["staging leftover (never served)"] += 1
            continue
        if key.rsplit("/", 1)[-1] == "health-check" and not data:
            continue
        found = [name for name, hit in (("pending", (key, sha) in pending), ("flagged", (key, sha) in flagged),
                                        ("quarantined", (key, sha) in quarantined)) if hit]
        if not found and ((key, sha) in clean_rows or sha in scanned):
            found = ["scanned-clean"]
        if len(found) != 1:
            violations.append(f"{key}: in the bucket and {found or 'never screened'}")
        states[found[0] if len(found) == 1 else "VIOLATION"] += 1
    by_key = {r.key: r for r in run.records}
    caught_later = 0
    for record in run.records:
        data = objects.get(record.key)
        if record.must_stop and data is not None:
            violations.append(f"{record.key}: {record.kind} must be stopped but is in the bucket")
        if record.outcome == "ok" and (data is None or hashlib.sha256(data).hexdigest() != record.sha256):
            if (record.key, record.sha256) in stopped:  # landed while the detectors were away, caught later
                caught_later += 1
            else:
                violations.append(f"{record.key}: the client saw success but the bucket "
                                  f"{'lacks it' if data is None else 'holds other bytes'}")
    unknown = [k for k in objects if not k.startswith("_bucketguard/") and k not in by_key and k != "health-check"]
    violations += [f"{k}: in the bucket but no client sent it" for k in unknown]
    verify = subprocess.run([sys.executable, "-m", "proxy.cli", "evidence", "verify", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    if verify.returncode != 0:
        violations.append(f"evidence chain: {verify.stdout.strip()} {verify.stderr.strip()}")
    summary = {
        "objects in the bucket by state": dict(states),
        "quarantine items": dict(Counter(f"{a}/{s}" for _, _, a, s in items)),
        "landed then caught by a deferred scan": caught_later,
        # a flag whose write failed after the verdict is marked not-landed (issue 9: records say what happened);
        # one still "flagged" without its object is a proxy killed between the verdict and the write's answer
        "flag records marked not-landed (write failed)": sum(1 for _, _, a, st in items
                                                               if a == "flag" and st == "not-landed"),
        "flag records still 'flagged' whose object is not in the bucket": sum(
            1 for k, s, a, st in items
            if a == "flag" and st == "flagged" and hashlib.sha256(objects.get(k, b"")).hexdigest() != s),
        "evidence verify": verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.returncode,
    }
    return summary, violations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long clients upload (default 180)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent pict-rs clients (default 16)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=120.0, help="seconds allowed for deferred scans at the end")
    parser.add_argument("--relay", nargs=2, type=int, metavar=("LISTEN", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay_main(*args.relay)
        return 0

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bucketguard-load-fault-"))
    workload = Workload(args.seed)
    pack = build_test_pack(tmp / "test-pack")
    moto = start_moto_process(log=tmp / "moto.log")
    bucket = "load-fault-media"
    moto.server.create_bucket(bucket)
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    relay_port, inference_port, proxy_port = free_port(), free_port(), free_port()
    config = write_config(
        tmp, moto.server, bucket, port=proxy_port,
        limits="janitor_interval_s = 5\nstale_upload_age_s = 20\nmultipart_lease_s = 15",
        inference=f'mode = "remote"\nendpoints = ["http://127.0.0.1:{inference_port}"]\ntoken = "{TOKEN}"\n'
                  "timeout_s = 5\nretries = 0",
        screening=f'policy = "{policy}"\n'
                  "scan_timeout_s = 10\npending_poll_s = 0.5\npending_retry_s = 1\npending_confirm_s = 3\n"
                  "pending_missing_s = 30\npending_max_attempts = 8")
    config.write_text(config.read_text().replace(moto.server.endpoint, f"http://127.0.0.1:{relay_port}"))
    here = Path(__file__).resolve()
    upstream = Component("upstream", [sys.executable, str(here), "--relay", str(relay_port), str(moto.port)],
                         f"tcp:{relay_port}", tmp / "relay.log")
    inference = Component("inference", [sys.executable, "-m", "proxy.cli", "inference", "serve", "--pack",
                                        str(pack), "--listen", f"127.0.0.1:{inference_port}", "--token", TOKEN,
                                        "--provider", "cpu", "--threads", "1"],
                          f"http://127.0.0.1:{inference_port}/readyz", tmp / "inference.log")
    proxy = Component("proxy", [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                      f"http://127.0.0.1:{proxy_port}/healthz", tmp / "proxy.log")
    components = [upstream, inference, proxy]
    run = Run()
    started = time.monotonic()
    try:
        for component in components:
            component.start()
        endpoint = f"http://127.0.0.1:{proxy_port}"
        deadline = time.monotonic() + args.seconds
        rounds = max(1, round(args.seconds / 60))
        chaos = threading.Thread(target=chaos_loop, args=(components, rng, deadline - 2, rounds), daemon=True)
        chaos.start()
        clients = [threading.Thread(target=client_loop, args=(i, endpoint, workload, run, deadline), daemon=True)
                   for i in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(args.seconds + 300)
        chaos.join(60)
        for component in components:
            if component.process is None or component.process.poll() is not None:
                component.start()
        wait_healthy(endpoint, proxy.process, timeout=60, log=proxy.log)
        settle_until = time.monotonic() + args.settle
        db = tmp / "state.db"
        while open_pending(db) and time.monotonic() < settle_until:
            time.sleep(1.0)
        time.sleep(2.0)
        summary, violations = audit(run, moto, bucket, db, config)
    finally:
        for component in reversed(components):
            component.stop()
        moto.stop()
    outcomes = Counter((r.kind, r.outcome) for r in run.records)
    kinds = sorted({r.kind for r in run.records})
    print(f"load and fault: {args.clients} clients for {args.seconds:.0f} s (both pict-rs generations), "
          f"{time.monotonic() - started:.0f} s in all; work folder {tmp}")
    print("kill -9: " + ", ".join(f"{c.name} {c.kills} (back in {max(c.startups[1:], default=0):.1f} s at most)"
                                  for c in components)
          + "  (upstream = its front door process; moto keeps the data, see the docstring)")
    print(f"{'upload kind':22} {'ok':>6} {'refused':>8} {'error':>6}")
    for kind in kinds:
        print(f"{kind:22} {outcomes[(kind, 'ok')]:6} {outcomes[(kind, 'refused')]:8} {outcomes[(kind, 'error')]:6}")
    totals = Counter(r.outcome for r in run.records)
    print(f"{'all':22} {totals['ok']:6} {totals['refused']:8} {totals['error']:6}")
    errors = Counter(r.detail for r in run.records if r.outcome == "error")
    print("client errors (while something was down): " + ", ".join(f"{d} {n}" for d, n in errors.most_common(6)))
    for name, value in summary.items():
        print(f"{name}: {json.dumps(value) if isinstance(value, dict) else value}")
    print(f"violations: {len(violations)}")
    for line in violations[:50]:
        print(f"  {line}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
