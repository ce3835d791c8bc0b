"""`bucketguard federation keygen|peers|trust|distrust|status|publish-preview|revoke`: parse, call, print."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from proxy.cli import CommandError
from proxy.commands.quarantine import add_config_option, default_actor, open_database
from proxy.config import Config, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federation", help="share signed attestations with other instances")
    actions = parser.add_subparsers(dest="federation_command", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", help="write this instance's Ed25519 key; print the public key line")
    keygen.add_argument("--out", metavar="FILE", help="key file (default: federation.key_file of --config)")
    keygen.add_argument("--rotate", action="store_true",
                        help="replace the configured key: publish a rotation signed by the old key, keep it as "
                             "FILE.retired-<kid>")
    keygen.add_argument("--config", metavar="FILE", help="config file (for --rotate, or the key file's path)")
    keygen.set_defaults(handler=run_keygen)
    peers = actions.add_parser("peers", help="list peers: trust, weight, feed position, failures")
    peers.add_argument("--json", action="store_true")
    trust = actions.add_parser("trust", help="count a peer's word again (optionally for other scopes or weight)")
    trust.add_argument("peer", metavar="NAME")
    trust.add_argument("--for", dest="scopes", help="comma-separated: safe, block (default: as configured)")
    trust.add_argument("--weight", type=float)
    distrust = actions.add_parser("distrust", help="stop counting a peer's word at once; list what relied on it")
    distrust.add_argument("peer", metavar="NAME")
    status = actions.add_parser("status", help="this instance's key, its feed, peers' counters and reliance")
    status.add_argument("--json", action="store_true")
    preview = actions.add_parser("publish-preview", help="what this instance publishes (latest feed entries)")
    preview.add_argument("--limit", type=int, default=20)
    preview.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke one of this instance's attestations")
    revoke.add_argument("entry_id", metavar="ID")
    revoke.add_argument("--reason", default="")
    for sub, handler in ((peers, run_peers), (trust, run_trust), (distrust, run_distrust), (status, run_status),
                         (preview, run_preview), (revoke, run_revoke)):
        add_config_option(sub)
        sub.add_argument("--actor", default=default_actor(), help=argparse.SUPPRESS)
        sub.set_defaults(handler=handler)


def run_keygen(args: argparse.Namespace) -> int:
    from proxy.federation.keys import SigningKey

    config = load_config(args.config) if args.config else None
    out = args.out or (config.federation.key_file if config else "")
    if not out:
        raise CommandError("--out FILE is needed (or --config with federation.key_file)")
    if args.rotate:
        if config is None or not config.federation.key_file:
            raise CommandError("--rotate needs --config with federation.key_file (the key to rotate)")
        new = SigningKey.generate()
        asyncio.run(_rotate(config, new))
        print(new.public.line)
        return 0
    if os.path.exists(out):
        raise CommandError(f"{out} exists: never overwritten (use --rotate to replace a key in use)")
    key = SigningKey.generate()
    try:
        key.save(out)
    except OSError as exc:
        raise CommandError(f"{out}: cannot write the key: {exc.strerror}") from exc
    print(key.public.line)
    return 0


async def _rotate(config: Config, new: Any) -> None:
    from proxy.federation.store import FederationStore
    from proxy.federation.wiring import open_publisher

    async with open_database(config) as db:
        publisher = open_publisher(config, FederationStore(db))
        assert publisher is not None
        old = publisher.key
        path = Path(config.federation.key_file)
        retired = path.with_name(f"{path.name}.retired-{old.public.kid[:12]}")
        tmp = path.with_name(path.name + ".new")
        new.save(tmp)
        await publisher.rotate(old, new)
        os.replace(path, retired)
        os.replace(tmp, path)


def _run(config_path: str, body: Any) -> Any:
    config = load_config(config_path)

    async def main() -> Any:
        from proxy.federation.store import FederationStore
        from proxy.federation.wiring import checked_peers

        async with open_database(config) as db:
            store = FederationStore(db)
            try:
                await store.sync_peers(checked_peers(config))
                return await body(config, store)
            finally:
                await store.close()

    return asyncio.run(main())


def _known(config: Config, name: str) -> None:
    if name not in config.federation.peers:
        known = ", ".join(sorted(config.federation.peers)) or "none"
        raise CommandError(f"no peer {name!r} in [federation.peers] (configured: {known})")


def run_peers(args: argparse.Namespace) -> int:
    async def body(config: Config, store: Any) -> list[dict[str, Any]]:
        rows = await store.peer_table()
        for row in rows:
            row["trust"] = row["trust_override"] if row["trust_override"] is not None else row["trust"]
            row.pop("retired", None)
        return rows

    rows = _run(args.config, body)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "DISTRUSTED" if row["distrusted"] else f"trusted for {row['trust'] or 'nothing'}"
        print(f"{row['name']}: {row['url']} {state}, weight {row['weight']:g}, kid {row['kid'][:12]}, "
              f"cursor {row['cursor']}, stored {row['stored']}, failures {row['failures']}"
              + (f", last error: {row['last_error']}" if row["last_error"] else ""))
    if not rows:
        print("no peers configured ([federation.peers.NAME] in the config)")
    return 0


def run_trust(args: argparse.Namespace) -> int:
    scopes = None
    if args.scopes is not None:
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        if not scopes or any(s not in ("safe", "block") for s in scopes):
            raise CommandError("--for: a comma-separated list of safe and block")
    if args.weight is not None and args.weight <= 0:
        raise CommandError("--weight must be above 0")

    async def body(config: Config, store: Any) -> None:
        _known(config, args.peer)
        await store.set_trust(args.peer, distrusted=False, trust=scopes, weight=args.weight, actor=args.actor)

    _run(args.config, body)
    print(f"{args.peer}: trusted" + (f" for {','.join(scopes)}" if scopes else "")
          + (f", weight {args.weight:g}" if args.weight else ""))
    return 0


def run_distrust(args: argparse.Namespace) -> int:
    async def body(config: Config, store: Any) -> list[dict[str, Any]]:
        _known(config, args.peer)
        await store.set_trust(args.peer, distrusted=True, trust=None, weight=None, actor=args.actor)
        return await store.relied_on(args.peer)

    relied = _run(args.config, body)
    print(f"{args.peer}: distrusted; its attestations no longer count")
    buckets = sorted({r["bucket"] for r in relied})
    print(f"{len(relied)} decisions relied on {args.peer}"
          + "".join(f"\n  re-check: bucketguard scan --bucket {b} --relied-on {args.peer} --config {args.config}"
                    for b in buckets))
    return 0


def run_status(args: argparse.Namespace) -> int:
    async def body(config: Config, store: Any) -> dict[str, Any]:
        from proxy.federation.wiring import open_publisher

        publisher = open_publisher(config, store)
        own = None
        if publisher is not None:
            entries = await publisher.preview(limit=1)
            own = {"name": config.federation.name, "key": publisher.key.public.line,
                   "kid": publisher.key.public.kid, "publish": list(config.federation.publish),
                   "feed_entries": entries[0]["seq"] if entries else 0}
        peers = {}
        counts = await store.counts()
        for peer in await store.peers():
            peers[peer.name] = {"distrusted": peer.distrusted, "trust": sorted(peer.trust), "cursor": peer.cursor,
                                "stored": peer.stored, "counts": counts.get(peer.name, {}),
                                "relied_on_pending_recheck": len(await store.relied_on(peer.name))}
        return {"instance": own, "peers": peers}

    report = _run(args.config, body)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    own = report["instance"]
    if own:
        print(f"this instance: {own['name'] or '(unnamed)'} {own['key']} (kid {own['kid']})")
        print(f"  publishes: {', '.join(own['publish']) or 'nothing'}; feed entries: {own['feed_entries']}")
    else:
        print("this instance publishes nothing (no federation.key_file)")
    for name, peer in report["peers"].items():
        counters = ", ".join(f"{k} {v}" for k, v in sorted(peer["counts"].items())) or "nothing pulled yet"
        state = "DISTRUSTED" if peer["distrusted"] else "trusted for " + (",".join(peer["trust"]) or "nothing")
        print(f"peer {name}: {state}; {counters}; "
              f"{peer['relied_on_pending_recheck']} decisions relied on it (not re-checked)")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from proxy.federation.keys import unb64url

    async def body(config: Config, store: Any) -> list[dict[str, Any]]:
        from proxy.federation.wiring import open_publisher

        publisher = open_publisher(config, store)
        if publisher is None:
            raise CommandError("this instance publishes nothing: set federation.key_file (and federation.publish)")
        return await publisher.preview(limit=max(1, args.limit))

    rows = _run(args.config, body)
    shown = [{"seq": r["seq"], "revoked": bool(r["revoked"]),
              "payload": json.loads(unb64url(r["token"].split(".")[1]))} for r in rows]
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    config = load_config(args.config)
    print(f"publishing: {', '.join(config.federation.publish) or 'nothing'} (never bytes, keys, buckets or uploaders)")
    for item in shown:
        p = item["payload"]
        if p["t"] == "attestation":
            what = f"{p.get('verdict')} by {p.get('basis')} sha256 {p.get('sha256', '')[:16]}..."
        else:
            what = f"revokes {p.get('revokes')}" if p["t"] == "revocation" else f"new key {p.get('new_key')}"
        print(f"#{item['seq']} {p['t']} {p['id']}: {what}" + (" (revoked)" if item["revoked"] else ""))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    async def body(config: Config, store: Any) -> bool:
        from proxy.federation.wiring import open_publisher

        publisher = open_publisher(config, store)
        if publisher is None:
            raise CommandError("this instance publishes nothing: no federation.key_file")
        return await publisher.revoke(args.entry_id, args.reason)

    if not _run(args.config, body):
        raise CommandError(f"{args.entry_id}: no live attestation of this instance has that id")
    print(f"{args.entry_id}: revoked (the revocation is in the feed)")
    return 0
