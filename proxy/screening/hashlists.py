"""Allow and block hash lists loaded from files, and the built-in test-image list.

File format, one entry per line: `sha256:<64 hex>`, `md5:<32 hex>` or `pdq:<64 hex>`, then optionally
whitespace and a label (a category such as `csam` or a source reference). Blank lines and `#` comments are
ignored. A bad line stops start-up with the file and line number.

Rules that protect the operator: an allow list may hold only exact SHA-256 entries (a "known safe" decision
is never bound to a perceptual or MD5 match), and perceptual matches only ever block. PDQ hashes of low
quality (below MIN_PDQ_QUALITY, e.g. near-uniform images) are not matched, because they collide easily.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from proxy.screening.hashing import Hashes, Pdq
from proxy.screening.testimage import CATEGORY as TEST_CATEGORY
from proxy.screening.testimage import builtin_hashes

MIN_PDQ_QUALITY = 50
#: At most this many (candidate, entry) distances are held at once while matching.
_MAX_PAIRS = 1_000_000
_LINE = re.compile(r"^(sha256|md5|pdq):([0-9a-fA-F]+)(?:\s+(.*))?$")
_LENGTHS = {"sha256": 64, "md5": 32, "pdq": 64}

Kind = Literal["sha256", "md5", "pdq", "layout"]  # layout: the test image's robust matcher
#: What a PDQ match is asked about: an upload's candidate hashes (one hash, or none, is accepted too).
Candidates = Sequence[Pdq] | Pdq | None


def _as_list(candidates: Candidates) -> Sequence[Pdq]:
    if candidates is None:
        return ()
    return (candidates,) if isinstance(candidates, Pdq) else candidates


class HashListError(ValueError):
    pass


@dataclass(frozen=True)
class Match:
    list_name: str
    kind: Kind
    value: str
    label: str
    distance: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"list": self.list_name, "kind": self.kind, "value": self.value, "label": self.label,
                "distance": self.distance}


@dataclass
class HashList:
    name: str
    exact: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, hex) -> label
    pdq_hex: list[str] = field(default_factory=list)
    pdq_labels: list[str] = field(default_factory=list)
    _pdq_words: np.ndarray | None = None

    def add(self, kind: Kind, value: str, label: str) -> None:
        value = value.lower()
        if kind == "pdq":
            self.pdq_hex.append(value)
            self.pdq_labels.append(label)
            self._pdq_words = None
        else:
            self.exact[(kind, value)] = label

    def _words(self) -> np.ndarray:
        if self._pdq_words is None:
            raw = b"".join(bytes.fromhex(h) for h in self.pdq_hex)
            self._pdq_words = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 4) if raw else \
                np.zeros((0, 4), dtype=np.uint64)
        return self._pdq_words

    def match_exact(self, hashes: Hashes) -> Match | None:
        for kind, value in (("sha256", hashes.sha256), ("md5", hashes.md5)):
            label = self.exact.get((kind, value))
            if label is not None:
                return Match(self.name, kind, value, label)  # type: ignore[arg-type]
        return None

    def _closest(self, candidates: Candidates) -> np.ndarray | None:
        """Per entry, its smallest distance to ANY candidate (every sampled frame of an upload, each in its eight
        orientations); candidates of low quality are skipped. None when there is nothing to compare."""
        probes = list({p.hash_hex: p for p in _as_list(candidates) if p.quality >= MIN_PDQ_QUALITY})
        if not probes or not self.pdq_hex:
            return None
        words = self._words()
        step = max(1, _MAX_PAIRS // len(words))  # bound the (probes x entries) working set
        closest = np.full(len(words), 257, dtype=np.int64)
        for start in range(0, len(probes), step):
            chunk = np.frombuffer(bytes.fromhex("".join(probes[start:start + step])), dtype=">u8")
            chunk = chunk.astype(np.uint64).reshape(-1, 1, 4)
            distances = np.bitwise_count(np.bitwise_xor(words[None, :, :], chunk)).sum(axis=2)
            closest = np.minimum(closest, distances.min(axis=0))
        return closest

    def match_pdq(self, candidates: Candidates, max_distance: int) -> Match | None:
        """The closest entry within `max_distance` of any candidate."""
        closest = self._closest(candidates)
        if closest is None:
            return None
        entry = int(closest.argmin())
        if int(closest[entry]) > max_distance:
            return None
        return Match(self.name, "pdq", self.pdq_hex[entry], self.pdq_labels[entry], int(closest[entry]))

    def pdq_within(self, candidates: Candidates, max_distance: int) -> list[int]:
        """Every entry (by position) within `max_distance` of any candidate."""
        closest = self._closest(candidates)
        return [] if closest is None else [int(i) for i in np.flatnonzero(closest <= max_distance)]


def load_list(path: Path, *, allow: bool) -> HashList:
    hash_list = HashList(path.name)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HashListError(f"{path}: cannot read the hash list: {exc.strerror}") from exc
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        found = _LINE.match(line)
        if not found or len(found.group(2)) != _LENGTHS[found.group(1)]:
            raise HashListError(f"{path}:{number}: expected sha256:<64 hex>, md5:<32 hex> or pdq:<64 hex>, "
                                f"got {raw.strip()[:80]!r}")
        kind = found.group(1)
        if allow and kind != "sha256":
            raise HashListError(f"{path}:{number}: an allow list may only hold sha256 entries (a known-safe "
                                f"decision is bound to exact bytes, never to {kind})")
        hash_list.add(kind, found.group(2), (found.group(3) or "").strip())  # type: ignore[arg-type]
    return hash_list


def builtin_test_list() -> HashList:
    sha256, md5, pdq = builtin_hashes()
    test_list = HashList("builtin-test-image")
    test_list.add("sha256", sha256, TEST_CATEGORY)
    test_list.add("md5", md5, TEST_CATEGORY)
    test_list.add("pdq", pdq, TEST_CATEGORY)
    return test_list


@dataclass
class HashLists:
    allow: list[HashList]
    block: list[HashList]
    pdq_max_distance: int = 31

    @classmethod
    def load(cls, allow_paths: Iterable[str], block_paths: Iterable[str], pdq_max_distance: int = 31) -> HashLists:
        return cls([load_list(Path(p), allow=True) for p in allow_paths],
                   [load_list(Path(p), allow=False) for p in block_paths], pdq_max_distance)

    def allowed(self, hashes: Hashes) -> Match | None:
        for hash_list in self.allow:
            label = hash_list.exact.get(("sha256", hashes.sha256))
            if label is not None:
                return Match(hash_list.name, "sha256", hashes.sha256, label)
        return None

    def blocked(self, hashes: Hashes, candidates: Candidates = ()) -> Match | None:
        """An exact match, else a PDQ match of any candidate hash (see :meth:`HashList.match_pdq`)."""
        for hash_list in self.block:
            found = hash_list.match_exact(hashes) or hash_list.match_pdq(candidates, self.pdq_max_distance)
            if found:
                return found
        return None

    @property
    def needs_pdq(self) -> bool:
        return any(h.pdq_hex for h in self.block)
