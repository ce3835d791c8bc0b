"""`bucketguard serve`: run the proxy."""

from __future__ import annotations

import argparse
import sys

from proxy.cli import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the S3 proxy that pict-rs talks to",
        description="Run the S3-compatible screening proxy described by a config file.")
    parser.add_argument("--config", required=True, help="path to the TOML config file")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import build_app
    from proxy.config import ConfigError, load_config
    from proxy.logs import configure_logging
    from proxy.serving import uvicorn_options
    from proxy.setup.checks import startup_problems

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}", status=1) from exc
    problems = startup_problems(config)
    if problems:
        for problem in problems:
            print(f"bucketguard: {args.config}: {problem}", file=sys.stderr)
        print(f"bucketguard: not starting; `bucketguard config check {args.config}` checks again", file=sys.stderr)
        return 1
    configure_logging(config.server.log_level, config.server.log_format)
    host, port = split_listen(args.listen or config.server.listen)
    app = build_app(config)
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=10,
        **uvicorn_options(config.limits.max_header_bytes, config.limits.max_header_count),
    )
    return 0
