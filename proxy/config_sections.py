"""The config's sections: one frozen dataclass per TOML table, with its defaults and what each key means.

:mod:`proxy.config` reads a file into these (and is where every other module imports them from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
