"""The one config loader: a TOML file, validated at start-up, with secrets overridable from the environment.

Every section is a frozen dataclass. Validation walks the TOML tables against those dataclasses and
raises :class:`ConfigError` naming the dotted key that is wrong (``limits.max_object_bytes: expected an
integer, got 'ten'``), so an operator knows which line to fix. Unknown keys are errors too: a typo must
never silently fall back to a default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "BUCKETGUARD_"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:9000"
    #: Region expected in clients' credential scope (pict-rs sends its `region` as written).
    region: str = "us-east-1"
    #: Host names under which `{bucket}.{host}` virtual-host addressing is recognised.
    base_domains: tuple[str, ...] = ("localhost",)
    #: Token for /admin, /metrics is open. Env: BUCKETGUARD_ADMIN_TOKEN.
    admin_token: str = ""
    #: Token pict-rs's external validation uses for POST /validate. Env: BUCKETGUARD_VALIDATE_TOKEN.
    validate_token: str = ""
    #: Tokens of pull-mode inference workers, name -> token. Env: BUCKETGUARD_WORKER_TOKEN_<NAME>.
    worker_tokens: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class ClientConfig:
    access_key: str
    #: Env: BUCKETGUARD_CLIENT_<ACCESS_KEY>_SECRET (access key upper-cased, non-alphanumerics as `_`).
    secret_key: str
    name: str = ""
    #: When set, requests with this key must carry this session token (x-amz-security-token).
    session_token: str = ""


@dataclass(frozen=True)
class UpstreamConfig:
    endpoint: str = "http://127.0.0.1:9001"
    region: str = "us-east-1"
    access_key: str = ""
    #: Env: BUCKETGUARD_UPSTREAM_SECRET_KEY.
    secret_key: str = ""
    #: Env: BUCKETGUARD_UPSTREAM_SESSION_TOKEN.
    session_token: str = ""
    addressing: Literal["path", "virtual"] = "path"
    #: Client-facing bucket name -> real bucket name. An empty map passes names through unchanged.
    #: "*" is pass-through mode: every bucket the upstream identity reaches, under its own name (bucket
    #: creation and deletion forwarded), except the quarantine bucket.
    buckets: Literal["*"] | dict[str, str] = field(default_factory=dict)
    verify_tls: bool = True
    max_pool_connections: int = 64


@dataclass(frozen=True)
class LimitsConfig:
    max_object_bytes: int = 1024 * 1024 * 1024
    #: Bytes of one upload kept in memory before the rest is spooled to a temporary file.
    memory_buffer_bytes: int = 8 * 1024 * 1024
    spool_dir: str = ""
    #: Seconds a client may take to send a request body.
    client_body_timeout_s: float = 120.0
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 60.0
    #: Allowed difference between the client's X-Amz-Date and our clock.
    max_clock_skew_s: int = 900
    #: Longest X-Amz-Expires accepted on a presigned URL (S3's own limit is 7 days).
    max_presign_expires_s: int = 7 * 24 * 3600
    #: Uploads screened at once; more wait, and past `max_waiting_uploads` get 503 SlowDown.
    max_concurrent_uploads: int = 64
    max_waiting_uploads: int = 256
    max_multipart_parts: int = 10000
    #: Seconds a multipart Complete holds its upload while it screens (renewed as it goes); after that a
    #: retried Complete, an Abort or the janitor may take over an upload whose completer died.
    multipart_lease_s: float = 60.0
    #: The janitor: how often it runs, and the age after which an unfinished upload is aborted and an
    #: orphaned staging object deleted.
    janitor_interval_s: float = 600.0
    stale_upload_age_s: float = 86400.0
    #: A request's head (request line and headers) is refused past these, before anything reads it.
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    #: /readyz turns not-ready when the spool or local quarantine disk has less than this free.
    min_free_disk_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///bucketguard.db"


@dataclass(frozen=True)
class InferenceConfig:
    #: "in-process" runs the packs below on this machine's CPU; "remote" calls `endpoints`;
    #: "pull" waits for `bucketguard inference worker` processes to fetch jobs.
    mode: Literal["in-process", "remote", "pull", "none"] = "in-process"
    packs: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    #: Env: BUCKETGUARD_INFERENCE_TOKEN.
    token: str = ""
    provider: Literal["auto", "cpu", "cuda"] = "cpu"
    fp16: bool = False
    #: in-process only: use the packs' checked int8 variants on the CPU (nsfw-age built with --int8).
    int8: bool = False
    #: in-process only: KServe v2 servers (Triton, MLServer) that run the packs' graphs, balanced; decoding and
    #: every pre- and post-processing step stay here (`bucketguard model triton-repo PACK OUT`).
    kserve: tuple[str, ...] = ()
    intra_op_threads: int = 0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 20.0
    retries: int = 1
    #: Pull mode: seconds a worker holds a job before another worker may take it.
    lease_s: float = 30.0


@dataclass(frozen=True)
class ScreeningConfig:
    policy: str = ""
    allow_lists: tuple[str, ...] = ()
    block_lists: tuple[str, ...] = ()
    pdq_max_distance: int = 31
    #: Seconds an upload may wait for a verdict before `on_unavailable` applies (pict-rs gives up at 30 s).
    scan_timeout_s: float = 20.0
    #: Deferred scans: how often an idle worker looks for work, and how long it waits while detectors are away.
    pending_poll_s: float = 2.0
    pending_retry_s: float = 5.0
    #: A pending row the front never confirmed written (the proxy died in between) is checked this late.
    pending_confirm_s: float = 10.0
    #: How long a pending object that is not (yet) in the bucket is looked for before it is reported missing.
    pending_missing_s: float = 600.0
    #: Claims of one pending row (detectors away, crashes while scanning it) before it is flagged for review.
    pending_max_attempts: int = 10


@dataclass(frozen=True)
class QuarantineConfig:
    #: "local" keeps quarantined bytes in `path`; "s3" in a separate bucket with its own credentials.
    store: Literal["local", "s3"] = "local"
    path: str = "quarantine"
    bucket: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    access_key: str = ""
    #: Env: BUCKETGUARD_QUARANTINE_SECRET_KEY.
    secret_key: str = ""
    retention_days: int = 365


@dataclass(frozen=True)
class PeerConfig:  # [federation.peers.NAME]: its proxy's URL, the "ed25519:..." line its keygen printed, trust
    url: str
    key: str
    trust: tuple[Literal["safe", "block"], ...] = ()
    weight: float = 1.0


@dataclass(frozen=True)
class FederationConfig:  # docs/FEDERATION.md: on when key_file (publish) or peers (subscribe) are set
    name: str = ""
    key_file: str = ""
    publish: tuple[Literal["clean", "confirmed", "hashlist"], ...] = ()
    attestation_ttl_days: float = 30.0
    peers: dict[str, PeerConfig] = field(default_factory=dict)
    safe_quorum: float = 2.0
    block_quorum: float = 1.0
    accept_packs: tuple[str, ...] = ()
    on_peer_block: Literal["quarantine", "flag"] = "quarantine"
    pull_interval_s: float = 60.0
    max_attestations_per_peer: int = 2_000_000


@dataclass(frozen=True)
class PictrsConfig:  # the loop back to pict-rs (proxy/integrations/pictrs.py): off while endpoint is empty
    endpoint: str = ""
    #: pict-rs's server.api_key (X-Api-Token). Env: BUCKETGUARD_PICTRS_API_KEY.
    api_key: str = ""
    #: pict-rs's own PostgreSQL repo, read-only, to map an object key to its aliases. Env: BUCKETGUARD_PICTRS_REPO_URL.
    repo_url: str = ""
    timeout_s: float = 10.0


@dataclass(frozen=True)
class LemmyConfig:  # attribution (proxy/integrations/lemmy.py): Lemmy's database, read-only. Env: BUCKETGUARD_LEMMY_URL
    database_url: str = ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    clients: tuple[ClientConfig, ...] = ()
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    pictrs: PictrsConfig = field(default_factory=PictrsConfig)
    lemmy: LemmyConfig = field(default_factory=LemmyConfig)

    def client_secret(self, access_key: str) -> str | None:
        for client in self.clients:
            if client.access_key == access_key:
                return client.secret_key
        return None

    @property
    def passthrough(self) -> bool:
        """`[upstream] buckets = "*"`: every upstream bucket but the quarantine one, under its own name."""
        return self.upstream.buckets == "*"

    @property
    def bucket_map(self) -> dict[str, str]:
        """The client -> real bucket map; empty in pass-through mode and when names pass unchanged."""
        return {} if isinstance(self.upstream.buckets, str) else dict(self.upstream.buckets)

    def real_bucket(self, client_bucket: str) -> str | None:
        """The upstream bucket behind a client-facing name, or None when it is not served."""
        if isinstance(self.upstream.buckets, str) or not self.upstream.buckets:
            return client_bucket
        return self.upstream.buckets.get(client_bucket)


def env_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).upper()


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_describe(value)}")
        return _build(annotation, value, where)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: expected one of {choices}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return tuple(_convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_describe(value)}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:  # the first that fits; the last one names the error
            with contextlib.suppress(ConfigError):
                return _convert(value, option, where)
        return _convert(value, options[-1], where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {annotation!r}")


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown setting (known here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{prefix}.{name}" if prefix else name
        if name in table:
            kwargs[name] = _convert(table[name], hints[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required setting is missing")
    return cls(**kwargs)


def _apply_env(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, Any]:
    """Let the environment supply secrets so they need not sit in the file."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    simple = {
        ("server", "admin_token"): "ADMIN_TOKEN",
        ("server", "validate_token"): "VALIDATE_TOKEN",
        ("upstream", "access_key"): "UPSTREAM_ACCESS_KEY",
        ("upstream", "secret_key"): "UPSTREAM_SECRET_KEY",
        ("upstream", "session_token"): "UPSTREAM_SESSION_TOKEN",
        ("inference", "token"): "INFERENCE_TOKEN",
        ("quarantine", "access_key"): "QUARANTINE_ACCESS_KEY",
        ("quarantine", "secret_key"): "QUARANTINE_SECRET_KEY",
        ("database", "url"): "DATABASE_URL",
        ("pictrs", "api_key"): "PICTRS_API_KEY",
        ("pictrs", "repo_url"): "PICTRS_REPO_URL",
        ("lemmy", "database_url"): "LEMMY_URL",
    }
    for (section, key), suffix in simple.items():
        value = environ.get(ENV_PREFIX + suffix)
        if value is not None:
            raw.setdefault(section, {})[key] = value
    clients = [dict(c) if isinstance(c, dict) else c for c in raw.get("clients", [])]
    for client in clients:
        if isinstance(client, dict) and isinstance(client.get("access_key"), str):
            value = environ.get(f"{ENV_PREFIX}CLIENT_{env_key(client['access_key'])}_SECRET")
            if value is not None:
                client["secret_key"] = value
    if clients:
        raw["clients"] = clients
    server = raw.get("server")
    if isinstance(server, dict):
        tokens = dict(server.get("worker_tokens") or {})
        for name in list(tokens):
            value = environ.get(f"{ENV_PREFIX}WORKER_TOKEN_{env_key(name)}")
            if value is not None:
                tokens[name] = value
        if tokens:
            server["worker_tokens"] = tokens
    return raw


def _check(config: Config) -> None:
    host, _, port = config.server.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"server.listen: expected HOST:PORT, got {config.server.listen!r}")
    if not config.clients:
        raise ConfigError("clients: at least one [[clients]] entry with access_key and secret_key is needed")
    seen: set[str] = set()
    for i, client in enumerate(config.clients):
        if not client.access_key or not client.secret_key:
            raise ConfigError(f"clients[{i}]: access_key and secret_key must not be empty")
        if client.access_key in seen:
            raise ConfigError(f"clients[{i}].access_key: {client.access_key!r} is listed twice")
        seen.add(client.access_key)
    reserved = {"healthz", "readyz", "metrics", "admin", "validate", "_bucketguard", "federation"}
    for name in config.upstream.buckets if isinstance(config.upstream.buckets, dict) else ():
        if name in reserved:
            raise ConfigError(f"upstream.buckets.{name}: this name is reserved for the proxy's own endpoints")
    if not config.upstream.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"upstream.endpoint: expected an http:// or https:// URL, got "
                          f"{config.upstream.endpoint!r}")
    limits = config.limits
    if limits.memory_buffer_bytes < 64 * 1024:
        raise ConfigError("limits.memory_buffer_bytes: must be at least 65536")
    if limits.max_object_bytes < 1:
        raise ConfigError("limits.max_object_bytes: must be at least 1")
    if limits.max_concurrent_uploads < 1:
        raise ConfigError("limits.max_concurrent_uploads: must be at least 1")
    if not config.database.url:
        raise ConfigError("database.url: must not be empty")
    if config.quarantine.store == "s3" and not config.quarantine.bucket:
        raise ConfigError("quarantine.bucket: required when quarantine.store is 's3'")


def parse_config(raw: dict[str, Any], environ: typing.Mapping[str, str] | None = None,
                 base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document (plus environment overrides) into a Config."""
    raw = _apply_env(raw, os.environ if environ is None else environ)
    config = _build(Config, raw, "")
    _check(config)
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    """Relative file paths in the config are relative to the config file, not to the working directory."""

    def resolve(path: str) -> str:
        return str(base_dir / path) if path and not Path(path).is_absolute() else path

    url = config.database.url
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        url = prefix + resolve(url[len(prefix):])
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, url=url),
        limits=dataclasses.replace(config.limits, spool_dir=resolve(config.limits.spool_dir)),
        inference=dataclasses.replace(config.inference,
                                      packs=tuple(resolve(p) for p in config.inference.packs)),
        screening=dataclasses.replace(
            config.screening,
            policy=resolve(config.screening.policy),
            allow_lists=tuple(resolve(p) for p in config.screening.allow_lists),
            block_lists=tuple(resolve(p) for p in config.screening.block_lists),
        ),
        quarantine=dataclasses.replace(config.quarantine, path=resolve(config.quarantine.path)),
        federation=dataclasses.replace(config.federation, key_file=resolve(config.federation.key_file)),
    )


def load_config(path: str | Path, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError with the file name and the bad key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(raw, environ, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
