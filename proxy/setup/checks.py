"""Every check `serve` makes before it starts, shared with `config check`: one line per problem, naming the key.

A config that parses can still be unusable: an unreadable policy, a database folder that does not exist, the
example's placeholder secrets, a quarantine bucket the S3 front would serve. `serve` runs these checks before
it binds a port and prints the problems (never a traceback); `config check` runs the same checks and, unless
told not to, also proves the upstream answers with the configured credentials and that its buckets exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config import ENV_PREFIX, Config, env_key

#: The example config's secrets read `set-by-<ENVIRONMENT VARIABLE>`, deploy/env.example's `change-me-...`:
#: reminders, never secrets.
PLACEHOLDER_MARKERS = ("set-by-", "change-me")
SQLITE_PREFIX = "sqlite+aiosqlite:///"


@dataclass(frozen=True)
class Problem:
    """One thing that stops the proxy from starting: the dotted key and what to do about it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _secrets(config: Config) -> list[tuple[str, str, str]]:
    """(dotted key, value, environment variable) of every secret in the config."""
    found = [
        ("server.admin_token", config.server.admin_token, "ADMIN_TOKEN"),
        ("server.validate_token", config.server.validate_token, "VALIDATE_TOKEN"),
        ("upstream.access_key", config.upstream.access_key, "UPSTREAM_ACCESS_KEY"),
        ("upstream.secret_key", config.upstream.secret_key, "UPSTREAM_SECRET_KEY"),
        ("upstream.session_token", config.upstream.session_token, "UPSTREAM_SESSION_TOKEN"),
        ("inference.token", config.inference.token, "INFERENCE_TOKEN"),
        ("quarantine.access_key", config.quarantine.access_key, "QUARANTINE_ACCESS_KEY"),
        ("quarantine.secret_key", config.quarantine.secret_key, "QUARANTINE_SECRET_KEY"),
        ("database.url", config.database.url, "DATABASE_URL"),
    ]
    for name, token in config.server.worker_tokens.items():
        found.append((f"server.worker_tokens.{name}", token, f"WORKER_TOKEN_{env_key(name)}"))
    for i, client in enumerate(config.clients):
        found.append((f"clients[{i}].secret_key", client.secret_key, f"CLIENT_{env_key(client.access_key)}_SECRET"))
    return found


def placeholder_problems(config: Config) -> list[Problem]:
    """The example's `set-by-...` values left in place: they would work as real, public secrets."""
    return [Problem(key, f"still the example's placeholder {value!r}: set {ENV_PREFIX}{env} in the environment "
                         "(or write a real secret; `bucketguard init` generates them)")
            for key, value, env in _secrets(config) if any(marker in value for marker in PLACEHOLDER_MARKERS)]


def _same_service(a: str, b: str) -> bool:
    """Whether two endpoints name the same S3 service (an empty one means the provider's default)."""
    if not a or not b:
        return True
    one, two = urlsplit(a.rstrip("/")), urlsplit(b.rstrip("/"))
    return (one.hostname, one.port or one.scheme) == (two.hostname, two.port or two.scheme)


def quarantine_exposure(config: Config) -> list[Problem]:
    """With `store = "s3"`, the quarantine bucket must not be one the S3 front could serve.

    The front hides the quarantine bucket whatever the map (defence in depth); a config that would serve it
    without that guard is refused all the same: an empty map (every name passed through implicitly), or a
    client name mapped to it. Explicit pass-through (`buckets = "*"`) means "every bucket but the quarantine".
    """
    q = config.quarantine
    if q.store != "s3" or config.passthrough:
        return []
    buckets = config.bucket_map
    if not buckets:
        return [Problem("upstream.buckets", f"empty, so every bucket name is passed through and S3 clients of the "
                        f"proxy could reach the quarantine bucket {q.bucket!r}: map only pict-rs's bucket, e.g. "
                        '[upstream.buckets] pictrs = "pictrs-media" (or write buckets = "*" to pass through every '
                        "bucket but the quarantine)")]
    if _same_service(q.endpoint, config.upstream.endpoint):
        for name, real in buckets.items():
            if q.bucket in (real, name):
                return [Problem(f"upstream.buckets.{name}", f"serves {real!r}, the quarantine bucket "
                                "(quarantine.bucket): give the quarantine its own bucket that no client name maps to")]
    return []


def _writable_folder(path: Path) -> str:
    """'' when `path` is (or can be created as) a writable folder, else why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no part of the path exists"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user (uid {os.getuid()})"
    return ""


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith(SQLITE_PREFIX) or ":memory:" in url:
        return None
    return Path(url[len(SQLITE_PREFIX):].split("?", 1)[0])


def file_problems(config: Config) -> list[Problem]:
    """Files the proxy reads are readable and valid; folders it writes are writable."""
    from inference.packs import PackError, load_pack
    from proxy.screening.hashlists import HashListError, HashLists
    from proxy.screening.policy import PolicyError, load_policy

    problems: list[Problem] = []
    try:
        load_policy(config.screening.policy or None)
    except PolicyError as exc:
        problems.append(Problem("screening.policy", f"{exc} (fix the file, or leave the key out for the shipped "
                                                    "policy)"))
    for kind, paths in (("allow_lists", config.screening.allow_lists), ("block_lists", config.screening.block_lists)):
        for i, path in enumerate(paths):
            try:
                HashLists.load([path] if kind == "allow_lists" else [], [path] if kind == "block_lists" else [])
            except (HashListError, OSError) as exc:
                problems.append(Problem(f"screening.{kind}[{i}]", str(exc)))
    folders = [("limits.spool_dir", config.limits.spool_dir)]
    if config.quarantine.store == "local":
        folders.append(("quarantine.path", config.quarantine.path))
    for key, folder in folders:
        why = _writable_folder(Path(folder)) if folder else ""
        if why:
            problems.append(Problem(key, f"{folder}: {why}; create it for the user that runs bucketguard "
                                         f"(mkdir -p {folder}) or point the key elsewhere"))
    db_file = _sqlite_path(config.database.url)
    if db_file is not None:
        if not db_file.parent.is_dir():
            problems.append(Problem("database.url", f"the folder {db_file.parent} does not exist: create it "
                                                    f"(mkdir -p {db_file.parent}) or point the URL elsewhere"))
        elif why := _writable_folder(db_file.parent):
            problems.append(Problem("database.url", f"{db_file.parent}: {why}; SQLite needs to write beside the "
                                                    "database file"))
    if config.inference.mode == "in-process":
        if config.inference.provider == "cuda":
            import onnxruntime

            from inference.runtime import CUDA

            available = onnxruntime.get_available_providers()
            if CUDA not in available:
                problems.append(Problem("inference.provider", f"'cuda', but this onnxruntime offers only "
                                        f"{', '.join(available)}: install the gpu extra (onnxruntime-gpu) on a "
                                        "machine with CUDA, or set provider = \"cpu\""))
        for i, pack in enumerate(config.inference.packs):
            try:
                load_pack(pack)
            except (PackError, OSError) as exc:
                problems.append(Problem(f"inference.packs[{i}]", f"{exc} (build it with `bucketguard model build`)"))
    elif config.inference.mode == "remote" and not config.inference.endpoints:
        problems.append(Problem("inference.endpoints", "mode is 'remote' but no endpoint is listed"))
    elif config.inference.mode == "pull" and not config.server.worker_tokens:
        problems.append(Problem("server.worker_tokens", "mode is 'pull' but no worker token is configured: "
                                                        "add one per worker ([server.worker_tokens] gpu1 = \"...\")"))
    return problems


def notes(config: Config) -> list[str]:
    """Things that work but that an operator should know (printed by `config check`, never fatal)."""
    out = []
    if config.inference.mode == "in-process" and not config.inference.packs:
        out.append("inference.packs: none configured, so no detector runs; hash lists, the built-in test image "
                   "and the policy still decide")
    if config.inference.mode == "none":
        out.append("inference.mode: 'none': no detector runs; hash lists and the built-in test image still decide")
    if not config.server.admin_token:
        out.append("server.admin_token: empty, so the review page under /admin/ is off")
    if config.inference.mode == "in-process":
        out.extend(calibration_notes(config))
    return out


def calibration_notes(config: Config) -> list[str]:
    """Loud notes for CLIP rules on CLIP packs that are not calibrated for them (unreadable files are
    `file_problems`' business)."""
    from inference.detectors.concepts import load_evaluator
    from inference.packs import PackError, load_pack
    from proxy.screening.policy import CLIP_PACK_KINDS, PolicyError, calibration_problems, load_policy

    try:
        policy = load_policy(config.screening.policy or None)
    except PolicyError:
        return []
    packs = []
    for path in config.inference.packs:
        try:
            pack = load_pack(path, verify=False)
            if pack.kind in CLIP_PACK_KINDS:
                calibrated = pack.calibrated_for(load_evaluator(pack.table_path("rules")).algorithm)
                packs.append((pack.name, pack.kind, calibrated))
        except (PackError, OSError, ValueError, KeyError):
            continue
    return [f"WARNING screening.policy: {problem}" for problem in calibration_problems(policy, packs)]


async def _database_problems(config: Config) -> list[Problem]:
    from proxy.state import Database

    db = Database(config.database.url)
    try:
        await db.migrate()
    except Exception as exc:  # any driver's failure is reported as one line naming the key
        return [Problem("database.url", f"cannot open or migrate the database ({_redact(config.database.url)}): "
                                        f"{_first_line(exc)}")]
    finally:
        with contextlib.suppress(Exception):
            await db.close()
    return []


async def _upstream_problems(config: Config) -> list[Problem]:
    from proxy.s3.errors import S3Error
    from proxy.storage.upstream import Upstream

    limits = dataclasses.replace(config.limits, upstream_connect_timeout_s=min(config.limits.upstream_connect_timeout_s,
                                                                                 5.0))
    upstream = Upstream(config.upstream, limits)
    problems: list[Problem] = []
    try:
        await upstream.start()
        targets = sorted(config.bucket_map.items())
        for name, real in (targets or [("", "")]):
            try:
                await (upstream.head_bucket(real) if real else upstream.list_buckets())
            except S3Error as exc:
                problems.append(_upstream_problem(config, name, real, exc))
                if exc.code not in ("NoSuchBucket", "NoSuchKey"):
                    break
    except Exception as exc:  # e.g. a malformed endpoint: still one line naming the key
        problems.append(Problem("upstream.endpoint", f"{config.upstream.endpoint}: {_first_line(exc)}"))
    finally:
        await upstream.close()
    return problems


def _upstream_problem(config: Config, name: str, real: str, exc: Exception) -> Problem:
    code = getattr(exc, "code", "")
    if code in ("NoSuchBucket", "NoSuchKey"):
        return Problem(f"upstream.buckets.{name}", f"the bucket {real!r} does not exist on {config.upstream.endpoint}: "
                                                   "create it there, or fix the name")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return Problem("upstream.access_key", f"{config.upstream.endpoint} refused the proxy's own credentials "
                                              f"({code}): check upstream.access_key and upstream.secret_key")
    if code == "ServiceUnavailable":
        return Problem("upstream.endpoint", f"{config.upstream.endpoint} did not answer: is the S3 server running "
                                            "and the address right?")
    return Problem("upstream.endpoint", f"{config.upstream.endpoint} answered {code}: {getattr(exc, 'message', exc)}")


async def _quarantine_problems(config: Config) -> list[Problem]:
    """The quarantine store accepts a write (and a delete) with its own credentials."""
    if config.quarantine.store != "s3":
        return []
    from proxy.evidence.store import open_store
    from proxy.storage.spool import SpooledBody

    store = open_store(config.quarantine)
    probe_id = f"bucketguard-check-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        body = SpooledBody.from_bytes(b"bucketguard config check\n")
        await store.put(probe_id, body, body.size)
        await store.delete(probe_id)
    except Exception as exc:  # any failure of the store is reported as one line naming the key
        return [Problem("quarantine.bucket", f"cannot write to s3://{config.quarantine.bucket} at "
                                             f"{config.quarantine.endpoint or 'the default endpoint'} with the "
                                             f"quarantine credentials: {_first_line(exc)}")]
    finally:
        await store.close()
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def federation_problems(config: Config) -> list[Problem]:
    """`[federation]`: peers' names, URLs and keys, and this instance's key file (see proxy.federation)."""
    if not (config.federation.key_file or config.federation.peers):
        return []
    from proxy.config import ConfigError
    from proxy.federation.keys import KeyFileError, SigningKey
    from proxy.federation.wiring import checked_peers

    problems: list[Problem] = []
    try:
        checked_peers(config)
    except ConfigError as exc:
        key, _, message = str(exc).partition(": ")
        problems.append(Problem(key, message))
    if config.federation.key_file:
        try:
            SigningKey.load(config.federation.key_file)
        except KeyFileError as exc:
            problems.append(Problem("federation.key_file", f"{exc} (bucketguard federation keygen writes one)"))
    return problems


def startup_problems(config: Config) -> list[Problem]:
    """What `serve` checks before binding its port: static checks first, then the database."""
    problems = (placeholder_problems(config) + quarantine_exposure(config) + file_problems(config)
                + federation_problems(config))
    if any(p.key == "database.url" for p in problems):
        return problems
    return problems + asyncio.run(_database_problems(config))


def all_problems(config: Config, *, reach_upstream: bool = True) -> list[Problem]:
    """`config check`: what `serve` checks, plus the upstream and the quarantine store answering."""
    problems = startup_problems(config)
    if not reach_upstream or any(p.key == "database.url" for p in problems):
        return problems

    async def remote() -> list[Problem]:
        return await _upstream_problems(config) + await _quarantine_problems(config)

    return problems + asyncio.run(remote())
