"""`bucketguard demo`: a real S3 server on loopback, the proxy in front of it, and a few pict-rs uploads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="try it: an S3 server, the proxy in front, and a few uploads as pict-rs sends them",
        description=("Start a real S3 server on loopback (moto) as the upstream, the proxy in front of it with "
                     "the embedded defaults (SQLite, local quarantine folder, in-process detectors when a pack "
                     "is built), upload a few images the way pict-rs does, and print what happened. State is "
                     "kept in $XDG_DATA_HOME/bucketguard/demo (or --dir) and cleared at each run, except the "
                     "built pack (--fresh removes it too)."))
    parser.add_argument("--keep", action="store_true",
                        help="keep both servers running so you can point aws, rclone or pict-rs at them")
    parser.add_argument("--port", type=int, default=9000, help="proxy port (default 9000; 0 picks a free one)")
    parser.add_argument("--dir", help="where the demo keeps its config and state "
                                      "(default $XDG_DATA_HOME/bucketguard/demo, i.e. ~/.local/share/...)")
    parser.add_argument("--fresh", action="store_true", help="also remove the built pack: start from nothing")
    parser.add_argument("--no-detectors", action="store_true",
                        help="skip building the nsfw-age pack (hash lists and the test image still work)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every upload")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import moto.server  # noqa: F401 - only to give a clear error when the demo extra is missing
    except ImportError as exc:
        raise CommandError("the demo needs moto's S3 server: pip install 'bucketguard[demo]'") from exc
    import dataclasses
    import json

    from proxy.commands.output import print_table
    from proxy.demo.run import DEMO_BUCKET, DemoError, default_folder, start, upload_all, wait_forever

    folder = Path(args.dir).resolve() if args.dir else default_folder()
    try:
        demo = start(folder, port=args.port, detectors=not args.no_detectors, fresh=args.fresh,
                     say=lambda text: print(text, file=sys.stderr))
    except DemoError as exc:
        raise CommandError(str(exc), status=1) from exc
    config = demo.config_path
    try:
        uploads = upload_all(demo)
        if args.json:
            print(json.dumps({"endpoint": demo.endpoint, "config": str(config), "detectors": demo.detectors,
                              "uploads": [dataclasses.asdict(u) for u in uploads]}))
        else:
            print_table(f"pict-rs uploads through bucketguard at {demo.endpoint} (detectors: {demo.detectors})",
                        ("pict-rs", "key", "type", "bytes", "stored", "read back"),
                        ([u.pictrs, u.key, u.content_type, u.size, u.stored, u.read_back] for u in uploads),
                        right=("bytes",))
            print(f"\nThe test image was refused and kept in quarantine as evidence: see "
                  f"`bucketguard quarantine list --config {config}`.")
        if args.keep:
            print(f"\nbucketguard is listening on {demo.endpoint} in front of the S3 server at {demo.s3_endpoint}."
                  f"\n  bucket: {DEMO_BUCKET}   access key: pictrs   secret key: {demo.secret}   region: us-east-1"
                  f"\n  config: {config}\n  try: AWS_ACCESS_KEY_ID=pictrs AWS_SECRET_ACCESS_KEY={demo.secret} "
                  f"aws --endpoint-url {demo.endpoint} s3 ls s3://{DEMO_BUCKET}/demo/\nCtrl-C stops both.",
                  flush=True)
            wait_forever()
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0
