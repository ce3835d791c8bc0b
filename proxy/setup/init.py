"""`bucketguard init`: write a commented config for one of four layouts, a policy file, folders and secrets.

Nothing is asked on a terminal: every choice is a flag with a default that fits the commonest case (one host,
detectors in-process on the CPU). Secrets are generated here (``secrets.token_urlsafe``) and the config file
is written with mode 0600. The result is meant to pass ``config check`` and ``serve`` as written.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from proxy.screening.policy import DEFAULT_POLICY

Layout = Literal["single", "gpu", "pull", "compose"]
LAYOUTS: dict[str, str] = {
    "single": "one host: the proxy runs the packs in-process on the CPU (the default)",
    "gpu": "one host with an NVIDIA GPU: the proxy runs the packs in-process with CUDA",
    "pull": "the proxy here; detectors on a GPU box behind NAT that pulls jobs (`bucketguard inference worker`)",
    "compose": "deploy/compose.yaml: pict-rs, the proxy and the inference service as containers",
}


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class InitError(ValueError):
    """A choice init cannot act on (an existing file without --force, a bad flag value)."""


@dataclass(frozen=True)
class InitOptions:
    folder: Path
    layout: Layout = "single"
    upstream_endpoint: str = "http://127.0.0.1:9001"
    upstream_region: str = "us-east-1"
    upstream_access_key: str = ""
    upstream_secret_key: str = ""
    bucket: str = "pictrs"
    real_bucket: str = ""
    listen: str = ""
    public_url: str = ""
    packs: tuple[str, ...] = ()
    data_dir: Path | None = None
    client_key: str = "pictrs"
    force: bool = False


@dataclass
class InitResult:
    config_path: Path
    policy_path: Path
    folders: list[Path]
    client_key: str
    client_secret: str
    admin_token: str
    proxy_url: str
    bucket: str
    region: str
    worker_tokens: dict[str, str] = field(default_factory=dict)

    def pictrs_store(self) -> str:
        """The `[store]` block for pict-rs.toml that points pict-rs at this proxy."""
        return "\n".join([
            "[store]",
            'type = "object_storage"',
            f'endpoint = "{self.proxy_url}"',
            "use_path_style = true",
            f'bucket_name = "{self.bucket}"',
            f'region = "{self.region}"',
            f'access_key = "{self.client_key}"',
            f'secret_key = "{self.client_secret}"',
            "client_timeout = 30",
        ])

    def to_json(self) -> dict[str, object]:
        return {"config": str(self.config_path), "policy": str(self.policy_path),
                "folders": [str(f) for f in self.folders], "proxy_url": self.proxy_url, "bucket": self.bucket,
                "pictrs_store": self.pictrs_store(), "worker_tokens": sorted(self.worker_tokens)}


def _toml(value: object) -> str:
    """A TOML string/array literal (JSON's escaping is valid TOML for these)."""
    return json.dumps(value)


def _token() -> str:
    return secrets.token_urlsafe(32)


def _inference_section(options: InitOptions, token: str) -> str:
    packs = _toml(list(options.packs))
    if options.layout == "single":
        note = "" if options.packs else (
            "# No pack yet: build the nsfw-age pack and list it here, e.g.\n"
            "#   bucketguard model build nsfw-age --out packs/nsfw-age\n")
        return (f'{note}# Detectors run in this process on the CPU.\nmode = "in-process"\nprovider = "cpu"\n'
                f"packs = {packs}\n")
    if options.layout == "gpu":
        return ("# Detectors run in this process on the GPU (onnxruntime-gpu: pip install 'bucketguard[gpu]').\n"
                f'mode = "in-process"\nprovider = "cuda"\nfp16 = true\npacks = {packs}\n')
    if options.layout == "pull":
        return ("# Detectors run on a GPU box that connects out to this proxy and leases jobs:\n"
                "#   bucketguard inference worker --proxy URL-OF-THIS-PROXY --token THE-WORKER-TOKEN --pack ...\n"
                'mode = "pull"\nlease_s = 30\n')
    return (f'# The inference service of deploy/compose.yaml.\nmode = "remote"\nendpoints = ["http://inference:9100"]\n'
            f"token = {_toml(token)}\ntimeout_s = 20\n")


def render_config(options: InitOptions, *, client_secret: str, admin_token: str, validate_token: str,
                  inference_token: str, worker_tokens: dict[str, str], data: Path, policy: Path) -> str:
    """The commented config text for the chosen layout."""
    real = options.real_bucket or options.bucket
    workers = "".join(f"{name} = {_toml(token)}\n" for name, token in worker_tokens.items())
    worker_table = f"\n# Pull-mode workers, name = token.\n[server.worker_tokens]\n{workers}" if workers else ""
    return f"""# bucketguard configuration written by `bucketguard init --layout {options.layout}`:
#   {LAYOUTS[options.layout]}
# Check it with `bucketguard config check {options.folder / 'bucketguard.toml'}`; start with
# `bucketguard serve --config {options.folder / 'bucketguard.toml'}`.
# This file holds secrets (mode 0600). Any secret may instead come from the environment:
# BUCKETGUARD_CLIENT_<KEY>_SECRET, BUCKETGUARD_UPSTREAM_SECRET_KEY, BUCKETGUARD_ADMIN_TOKEN, ...

[server]
listen = {_toml(options.listen)}
region = {_toml(options.upstream_region)}
# Virtual-host addressing ({{bucket}}.HOST) is recognised under these names; pict-rs uses path style.
base_domains = ["localhost"]
# The review page under /admin/ logs in with this token.
admin_token = {_toml(admin_token)}
# pict-rs's external validation (POST /validate) sends this bearer token.
validate_token = {_toml(validate_token)}
log_format = "text"
{worker_table}
# The credentials pict-rs uses: its [store] access_key / secret_key.
[[clients]]
access_key = {_toml(options.client_key)}
secret_key = {_toml(client_secret)}
name = "pict-rs"

# The real S3 server (RGW, MinIO, Garage, AWS...). Only the buckets mapped below are served.
[upstream]
endpoint = {_toml(options.upstream_endpoint)}
region = {_toml(options.upstream_region)}
addressing = "path"
access_key = {_toml(options.upstream_access_key)}
secret_key = {_toml(options.upstream_secret_key)}

[upstream.buckets]
# bucket name pict-rs uses = the real bucket
{_toml(options.bucket)} = {_toml(real)}

[limits]
max_object_bytes = 1073741824       # 1 GiB: larger uploads get EntityTooLarge
memory_buffer_bytes = 8388608       # per upload; beyond it the body is spooled to disk
spool_dir = {_toml(str(data / 'spool'))}

[database]
# SQLite for one replica; for several, PostgreSQL: postgresql+asyncpg://user:pass@host/bucketguard
url = {_toml('sqlite+aiosqlite:///' + str(data / 'bucketguard.db'))}

[inference]
{_inference_section(options, inference_token)}
[screening]
# Rules, tried in order; `bucketguard policy check` checks a change before you restart.
policy = {_toml(str(policy))}

[quarantine]
# Caught uploads are kept here as evidence (mode 0700), readable only through the review page and the CLI.
store = "local"
path = {_toml(str(data / 'quarantine'))}
retention_days = 365
"""


def default_listen(layout: Layout) -> str:
    return "0.0.0.0:9000" if layout == "compose" else "127.0.0.1:9000"


def write_instance(options: InitOptions) -> InitResult:
    """Write the config and policy, create the folders; refuses to overwrite without `force`."""
    folder = options.folder.resolve()
    config_path, policy_path = folder / "bucketguard.toml", folder / "policy.toml"
    if not options.force:
        for path in (config_path, policy_path):
            if path.exists():
                raise InitError(f"{path} exists: pass --force to replace it (its secrets are then new)")
    if options.layout == "compose":
        data, policy_in_config = Path("/var/lib/bucketguard"), Path("/etc/bucketguard/policy.toml")
    else:
        data = (options.data_dir or folder / "data").resolve()
        policy_in_config = policy_path
    for flag, name in (("--bucket", options.bucket), ("--real-bucket", options.real_bucket or options.bucket)):
        if not BUCKET_NAME.fullmatch(name):
            raise InitError(f"{flag}: {name!r} is not an S3 bucket name (3 to 63 of a-z, 0-9, '.' and '-')")
    listen = options.listen or default_listen(options.layout)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InitError(f"--listen: expected HOST:PORT, got {listen!r}")
    options = InitOptions(**{**options.__dict__, "folder": folder, "listen": listen})
    worker_tokens = {"gpu1": _token()} if options.layout == "pull" else {}
    client_secret, admin_token = _token(), _token()
    text = render_config(options, client_secret=client_secret, admin_token=admin_token, validate_token=_token(),
                         inference_token=_token(), worker_tokens=worker_tokens, data=data, policy=policy_in_config)
    folders = [folder]
    if options.layout != "compose":
        folders += [data, data / "spool", data / "quarantine"]
    for path in folders:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(DEFAULT_POLICY, policy_path)
    temp = config_path.with_name(".bucketguard.toml.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as sink:
        sink.write(text)
    os.replace(temp, config_path)
    public = options.public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '[::]') else host}:{port}"
    if options.layout == "compose":
        public = options.public_url or "http://bucketguard:9000"
    return InitResult(config_path, policy_path, folders, options.client_key, client_secret, admin_token,
                      public.rstrip("/"), options.bucket, options.upstream_region, worker_tokens)
