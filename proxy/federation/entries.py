"""The three kinds of feed entry (attestation, revocation, rotation): building their payloads and checking them.

Every payload is a JSON object with ``v`` (1), ``t`` (the kind), ``id`` (32 hex characters, unique per
issuer) and ``iat`` (seconds since the epoch). Checking is strict and bounded: unknown kinds, wrong types,
oversized maps and non-finite numbers are refused, so nothing a peer sends reaches the policy unchecked.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

VERSION = 1
VERDICTS = ("clean", "block")
BASES = ("detectors", "review", "hashlist")
_HEX = re.compile(r"^[0-9a-f]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,64}$")
MAX_SIGNALS = 64
MAX_PACKS = 16


class EntryError(ValueError):
    """A verified payload that is not a valid entry; the message says which field."""


@dataclass(frozen=True)
class Attestation:
    id: str
    iss: str
    sha256: str
    pdq: str
    verdict: str
    basis: str
    category: str
    signals: dict[str, float]
    packs: dict[str, str]
    iat: int
    exp: int

    def payload(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "attestation", "id": self.id, "iss": self.iss, "sha256": self.sha256,
                "pdq": self.pdq, "verdict": self.verdict, "basis": self.basis, "category": self.category,
                "signals": self.signals, "packs": self.packs, "iat": self.iat, "exp": self.exp}


@dataclass(frozen=True)
class Revocation:
    id: str
    revokes: str
    iat: int
    reason: str = ""

    def payload(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "revocation", "id": self.id, "revokes": self.revokes, "iat": self.iat,
                "reason": self.reason}


@dataclass(frozen=True)
class Rotation:
    id: str
    new_key: str
    iat: int

    def payload(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "rotation", "id": self.id, "new_key": self.new_key, "iat": self.iat}


Entry = Attestation | Revocation | Rotation


def new_id() -> str:
    return secrets.token_hex(16)


def _hex(payload: dict[str, Any], name: str, length: int, *, optional: bool = False) -> str:
    value = payload.get(name, "" if optional else None)
    if optional and value == "":
        return ""
    if not isinstance(value, str) or len(value) != length or not _HEX.match(value):
        raise EntryError(f"{name}: expected {length} lower-case hex characters")
    return value


def _int(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise EntryError(f"{name}: expected seconds since the epoch")
    return value


def _text(payload: dict[str, Any], name: str, limit: int = 256) -> str:
    value = payload.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise EntryError(f"{name}: expected a string of at most {limit} characters")
    return value


def _signals(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > MAX_SIGNALS:
        raise EntryError(f"signals: expected an object of at most {MAX_SIGNALS} numbers")
    out: dict[str, float] = {}
    for name, number in value.items():
        if not _NAME.match(name) or isinstance(number, bool) or not isinstance(number, int | float):
            raise EntryError(f"signals.{name[:64]}: expected a short name and a number")
        if not math.isfinite(number):
            raise EntryError(f"signals.{name}: not a finite number")
        out[name] = float(number)
    return out


def _packs(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_PACKS:
        raise EntryError(f"packs: expected an object of at most {MAX_PACKS} name: version pairs")
    for name, version in value.items():
        if not _NAME.match(name) or not isinstance(version, str) or not _NAME.match(version):
            raise EntryError(f"packs.{name[:64]}: expected a short name and version")
    return dict(value)


def parse_entry(payload: dict[str, Any]) -> Entry:
    """A verified payload as an entry, or EntryError."""
    if payload.get("v") != VERSION:
        raise EntryError(f"v: expected {VERSION}")
    kind = payload.get("t")
    entry_id = _hex(payload, "id", 32)
    iat = _int(payload, "iat")
    if kind == "attestation":
        verdict, basis = payload.get("verdict"), payload.get("basis")
        if verdict not in VERDICTS:
            raise EntryError(f"verdict: expected one of {', '.join(VERDICTS)}")
        if basis not in BASES:
            raise EntryError(f"basis: expected one of {', '.join(BASES)}")
        exp = _int(payload, "exp")
        if exp <= iat:
            raise EntryError("exp: must be after iat")
        return Attestation(entry_id, _text(payload, "iss", 128), _hex(payload, "sha256", 64),
                           _hex(payload, "pdq", 64, optional=True), str(verdict), str(basis),
                           _text(payload, "category", 64), _signals(payload.get("signals", {})),
                           _packs(payload.get("packs", {})), iat, exp)
    if kind == "revocation":
        return Revocation(entry_id, _hex(payload, "revokes", 32), iat, _text(payload, "reason"))
    if kind == "rotation":
        new_key = payload.get("new_key")
        if not isinstance(new_key, str) or len(new_key) > 100:
            raise EntryError("new_key: expected an 'ed25519:...' key")
        return Rotation(entry_id, new_key, iat)
    raise EntryError("t: expected attestation, revocation or rotation")
