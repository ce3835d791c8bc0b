"""Ed25519 keys: this instance's signing key (a PEM file), peers' public keys as one line, JWS sign and verify.

The envelope is JWS compact serialisation (RFC 7515) with the fully-specified algorithm ``Ed25519``
(RFC 9864; the older ``EdDSA`` name is not accepted), through joserfc. A public key's one-line form is
``ed25519:`` + base64url (no padding) of its 32 raw bytes; its key id (``kid``) is the RFC 7638 JWK
thumbprint, so any JOSE library computes the same id.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

ALG = "Ed25519"
PREFIX = "ed25519:"
TYP = "bucketguard-federation+jws"
#: A single entry larger than this is refused before any parsing.
MAX_TOKEN_BYTES = 16 * 1024


class KeyFileError(ValueError):
    """A key file or key line that cannot be used; the message is one line for the operator."""


class BadSignature(ValueError):
    """A token whose signature, algorithm or encoding does not verify."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicKey:
    jwk: OKPKey
    line: str
    kid: str

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """The `ed25519:...` line that `bucketguard federation keygen` prints."""
        line = line.strip()
        if not line.startswith(PREFIX):
            raise KeyFileError(f"expected a key like 'ed25519:<43 base64url characters>', got {line[:60]!r}")
        try:
            raw = unb64url(line[len(PREFIX):])
        except ValueError as exc:
            raise KeyFileError("the key is not valid base64url") from exc
        if len(raw) != 32:
            raise KeyFileError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
        jwk = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)})
        return cls(jwk, PREFIX + b64url(raw), jwk.thumbprint())


class SigningKey:
    """This instance's private key."""

    def __init__(self, jwk: OKPKey) -> None:
        self.jwk = jwk
        self.public = PublicKey.parse(PREFIX + str(jwk.as_dict(private=False)["x"]))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(OKPKey.generate_key("Ed25519", private=True))

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the federation key: {exc.strerror}") from exc
        try:
            jwk = OKPKey.import_key(data)
        except (JoseError, ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not an Ed25519 private key in PEM form") from exc
        if jwk.as_dict(private=False).get("crv") != "Ed25519" or not jwk.is_private:
            raise KeyFileError(f"{path}: not an Ed25519 private key")
        return cls(jwk)

    def save(self, path: str | Path) -> None:
        """Write the PEM (PKCS#8) readable by the owner only; never overwrites."""
        pem = self.jwk.as_pem(private=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)

    def sign(self, payload: dict[str, Any]) -> str:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        header = {"alg": ALG, "kid": self.public.kid, "typ": TYP}
        return jws.serialize_compact(header, body, self.jwk, algorithms=[ALG])


def page_digest(entries: list[Any]) -> str:
    """SHA-256 (hex) over each entry's `"<seq> <jws>\\n"`, in order: what a page signature covers."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry['seq']} {entry['jws']}\n".encode())
    return digest.hexdigest()


def unverified_payload(token: str) -> dict[str, Any]:
    """A token's payload WITHOUT checking its signature: only for entries of a page whose signature verified."""
    try:
        payload = json.loads(unb64url(token.split(".")[1]))
    except (ValueError, IndexError) as exc:
        raise BadSignature("unreadable payload") from exc
    if not isinstance(payload, dict):
        raise BadSignature("the payload is not a JSON object")
    return payload


def token_kid(token: str) -> str:
    """The `kid` of a token's protected header, unverified (only to pick the key to verify with)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise BadSignature("not a JWS compact token")
    return _header_kid(token.split(".", 1)[0])


@functools.lru_cache(maxsize=64)
def _header_kid(header_b64: str) -> str:
    """Every entry a key signs has the same header: read it once."""
    try:
        header = json.loads(unb64url(header_b64))
    except ValueError as exc:
        raise BadSignature("unreadable protected header") from exc
    if not isinstance(header, dict) or header.get("alg") != ALG or not isinstance(header.get("kid"), str):
        raise BadSignature("the header must name alg Ed25519 and a kid")
    return header["kid"]


def verify(token: str, key: PublicKey) -> dict[str, Any]:
    """The verified payload of `token` under `key`, or BadSignature."""
    try:
        obj = jws.deserialize_compact(token, key.jwk, algorithms=[ALG])
        payload = json.loads(obj.payload)
    except (JoseError, ValueError) as exc:
        raise BadSignature(str(exc) or type(exc).__name__) from exc
    if not isinstance(payload, dict):
        raise BadSignature("the payload is not a JSON object")
    return payload
