"""`bucketguard screen FILE...`: the whole pipeline on local files, to tune a policy on your own images."""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
from pathlib import Path

from proxy.cli import CommandError

STOPPED = frozenset({"quarantine", "reject", "refuse"})
EXIT_STOPPED, EXIT_UNSCREENED = 1, 3
NO_DETECTORS = ("bucketguard: no detectors configured (no --pack, and no [inference] packs in a --config): only the "
                "hash lists, the built-in test image and the non-media rule decide; files they let through are "
                "'unscreened'")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "screen", help="run the screening pipeline on local files (nothing is uploaded or recorded)",
        description=("Decide each file as an upload would be decided: hash lists, the test image, the detectors "
                     "and the policy. Without --pack (or a config listing packs) no detector runs: the hash lists, "
                     "the built-in test image and the non-media rule still decide, and a file they let through is "
                     "reported as 'unscreened'. Exit status: 0 every file would land after a full screening, 1 any "
                     "file would be stopped, 3 none stopped but some were not screened by detectors, 2 usage."))
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--config", help="take policy, lists and packs from this config file")
    parser.add_argument("--policy", help="policy file (overrides the config's; default: the shipped policy)")
    parser.add_argument("--pack", action="append", help="model pack for in-process detectors (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from inference.engine import Engine
    from inference.packs import PackError
    from proxy.config import load_config
    from proxy.screening.hashlists import HashListError, HashLists
    from proxy.screening.pipeline import Pipeline
    from proxy.screening.policy import PolicyError, load_policy
    from proxy.storage.spool import SpooledBody

    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
    config = load_config(args.config) if args.config else None
    try:
        policy = load_policy(args.policy or (config.screening.policy if config else None) or None)
        lists = HashLists.load(config.screening.allow_lists if config else (),
                               config.screening.block_lists if config else (),
                               config.screening.pdq_max_distance if config else 31)
    except (PolicyError, HashListError) as exc:
        raise CommandError(str(exc)) from exc
    packs = args.pack or (list(config.inference.packs) if config else [])

    async def main() -> list[tuple[Path, object]]:
        try:
            engine = Engine.from_packs(packs) if packs else None
        except PackError as exc:
            raise CommandError(str(exc)) from exc
        pipeline = Pipeline(policy=policy, hashlists=lists, cache=None, detectors=engine)
        out = []
        try:
            for path in paths:
                body = SpooledBody.from_bytes(path.read_bytes())
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                out.append((path, await pipeline.decide(body, content_type, allow_defer=False)))
        finally:
            if engine is not None:
                await engine.close()
        return out

    results = asyncio.run(main())
    if not packs:
        print(NO_DETECTORS, file=sys.stderr)
    unscreened = 0
    for path, decision in results:
        missing = not packs and decision.step == "unavailable"
        unscreened += missing
        action = "unscreened" if missing else decision.action
        reason = "no detectors configured; hash lists and the test image did not stop it" if missing \
            else decision.reason
        if args.json:
            print(json.dumps({"file": str(path), "action": action, "rule": "" if missing else decision.rule,
                              "category": decision.category, "step": decision.step, "reason": reason,
                              "signals": decision.signals, "match": decision.match}))
        else:
            signals = " ".join(f"{k}={v:.3g}" for k, v in sorted(decision.signals.items()))
            rule = f" rule={decision.rule}" if decision.rule and not missing else ""
            print(f"{path}: {action}{rule} ({decision.step}: {reason}) {signals}".rstrip())
    if any(d.action in STOPPED and not (not packs and d.step == "unavailable") for _, d in results):
        return EXIT_STOPPED
    return EXIT_UNSCREENED if unscreened else 0
