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
from pathlib import Path
from typing import Any, Literal

from proxy.config_sections import (  # noqa: F401 - the public names of the config live here
    ClientConfig,
    Config,
    DatabaseConfig,
    FederationConfig,
    InferenceConfig,
    LemmyConfig,
    LimitsConfig,
    PeerConfig,
    PictrsConfig,
    QuarantineConfig,
    ScreeningConfig,
    ServerConfig,
    UpstreamConfig,
)

ENV_PREFIX = "BUCKETGUARD_"


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


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
