"""`bucketguard init`: write a working config, policy, folders and secrets for one layout; nothing is asked."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    from proxy.setup.init import LAYOUTS

    layouts = "; ".join(f"{name}: {text}" for name, text in LAYOUTS.items())
    parser = subparsers.add_parser(
        "init", help="write a config, policy, folders and secrets for a real instance",
        description=("Write FOLDER/bucketguard.toml (mode 0600, secrets generated) and FOLDER/policy.toml, create "
                     "the data folders, check the result the way `serve` does, and print the [store] block for "
                     f"pict-rs.toml. Layouts: {layouts}."))
    parser.add_argument("--dir", default=".", help="folder for bucketguard.toml and policy.toml (default: here)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="single", help="default: single")
    parser.add_argument("--upstream-endpoint", required=True, metavar="URL",
                        help="the real S3 server, e.g. http://127.0.0.1:7480 (RGW) or https://s3.example.org")
    parser.add_argument("--upstream-region", default="us-east-1")
    parser.add_argument("--upstream-access-key", default=os.environ.get("BUCKETGUARD_UPSTREAM_ACCESS_KEY", ""),
                        help="the proxy's own key on the real S3 server (default: $BUCKETGUARD_UPSTREAM_ACCESS_KEY)")
    parser.add_argument("--upstream-secret-key", default=os.environ.get("BUCKETGUARD_UPSTREAM_SECRET_KEY", ""),
                        help="its secret (default: $BUCKETGUARD_UPSTREAM_SECRET_KEY, which keeps it out of `ps`)")
    parser.add_argument("--bucket", default="pictrs", help="the bucket name pict-rs uses (default pictrs)")
    parser.add_argument("--real-bucket", default="", help="the real bucket behind it (default: the same name)")
    parser.add_argument("--listen", default="", help="HOST:PORT (default 127.0.0.1:9000; compose 0.0.0.0:9000)")
    parser.add_argument("--public-url", default="",
                        help="the URL pict-rs reaches the proxy at (default: http://LISTEN)")
    parser.add_argument("--pack", action="append", default=[], metavar="FOLDER",
                        help="model pack for the in-process detectors (repeatable; default: FOLDER/packs/nsfw-age "
                             "when it exists)")
    parser.add_argument("--data-dir", help="state, spool and quarantine folder (default: FOLDER/data)")
    parser.add_argument("--force", action="store_true", help="replace an existing config (new secrets)")
    parser.add_argument("--offline", action="store_true",
                        help="do not reach the upstream when checking the result")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from proxy.config import ConfigError, load_config
    from proxy.setup.checks import all_problems, notes
    from proxy.setup.init import InitError, InitOptions, write_instance

    folder = Path(args.dir)
    packs = [str(Path(p).resolve()) for p in args.pack]
    default_pack = folder / "packs" / "nsfw-age"
    if not packs and args.layout in ("single", "gpu") and (default_pack / "manifest.json").is_file():
        packs = [str(default_pack.resolve())]
    options = InitOptions(
        folder=folder, layout=args.layout, upstream_endpoint=args.upstream_endpoint,
        upstream_region=args.upstream_region, upstream_access_key=args.upstream_access_key,
        upstream_secret_key=args.upstream_secret_key, bucket=args.bucket, real_bucket=args.real_bucket,
        listen=args.listen, public_url=args.public_url, packs=tuple(packs),
        data_dir=Path(args.data_dir) if args.data_dir else None, force=args.force)
    try:
        result = write_instance(options)
    except InitError as exc:
        raise CommandError(str(exc), status=1) from exc
    except OSError as exc:
        raise CommandError(f"{exc.filename or folder}: {exc.strerror}", status=1) from exc
    try:
        config = load_config(result.config_path)
    except ConfigError as exc:  # init wrote something its own loader refuses: a flag value it passed through
        raise CommandError(f"the written config does not load: {exc}", status=1) from exc
    checked = args.layout != "compose"
    problems = all_problems(config, reach_upstream=not args.offline) if checked else []
    if args.json:
        print(json.dumps({**result.to_json(), "checked": checked, "problems": [str(p) for p in problems],
                          "notes": notes(config)}))
        return 1 if problems else 0
    print(f"wrote {result.config_path} (mode 0600: it holds the generated secrets)")
    print(f"wrote {result.policy_path} (the shipped policy; edit, then `bucketguard policy check`)")
    for path in result.folders[1:]:
        print(f"folder {path}")
    if not checked:
        print("not checked here: the paths are the containers' (run `bucketguard config check` inside)")
    elif problems:
        for problem in problems:
            print(f"bucketguard: {result.config_path}: {problem}", file=sys.stderr)
        print("fix the lines above, then: bucketguard config check " + str(result.config_path), file=sys.stderr)
    else:
        print(f"checked: OK ({'upstream not reached' if args.offline else 'upstream and buckets answer'})")
    for note in notes(config):
        print(f"note: {note}")
    print(f"\nadmin token for {result.proxy_url}/admin/: {result.admin_token}")
    for name, token in result.worker_tokens.items():
        print(f"worker {name}: bucketguard inference worker --proxy {result.proxy_url} --token {token} --pack PACK")
    print("\nPaste into pict-rs.toml (or set PICTRS__STORE__* in its environment):\n")
    print(result.pictrs_store())
    print(f"\nthen: bucketguard serve --config {result.config_path}")
    return 1 if problems else 0
