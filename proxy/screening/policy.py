"""The policy: named rules over signals, each with an action, read from a TOML file and validated.

    version = "2026-11"                 # optional; otherwise the file's SHA-256 names the version
    preset = "balanced"                 # optional: strict | balanced | lenient (defaults/presets.toml)
    on_undecodable = "flag"             # media that cannot be decoded
    on_non_media = "reject"             # bytes that are no image or video (sniffed, never the declared type)
    on_unavailable = "defer"            # detectors unreachable: defer | refuse | allow

    [[rule]]
    name = "minor-explicit"
    when = { explicit = ">= 0.6", p_minor = ">= 0.5" }   # every condition must hold
    action = "quarantine"                                 # allow | flag | quarantine | reject
    category = "csam"

Rules are tried in file order and the first whose conditions all hold decides; a rule naming a signal the
detectors did not produce does not fire. No expression is ever evaluated: conditions are parsed into
(operator, number) pairs. A preset's rules come after the file's own, and its settings apply where the file
sets none (what each preset changes is written at the top of defaults/presets.toml).

CLIP concept thresholds hold only for the model they were calibrated on: `calibration_problems` names every
rule on a `clip_*` signal when a loaded CLIP pack is not calibrated for its concept algorithm.
"""

from __future__ import annotations

import hashlib
import operator
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIONS = ("allow", "flag", "quarantine", "reject")
UNAVAILABLE = ("defer", "refuse", "allow")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}
_CONDITION = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_POLICY = Path(__file__).parent / "defaults" / "policy.toml"
PRESETS_FILE = Path(__file__).parent / "defaults" / "presets.toml"
PRESETS = ("strict", "balanced", "lenient")


class PolicyError(ValueError):
    """A policy that cannot be used: the message names the rule and the field."""


@dataclass(frozen=True)
class Condition:
    signal: str
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.signal} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Rule:
    name: str
    conditions: tuple[Condition, ...]
    action: str
    category: str = ""
    description: str = ""


@dataclass(frozen=True)
class Decision:
    action: str
    rule: str
    category: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    on_undecodable: str = "flag"
    on_non_media: str = "reject"  # pict-rs stores only media: unknown bytes stay out unless an operator says so
    on_unavailable: str = "defer"
    version: str = ""
    source: str = ""
    preset: str = ""

    def decide(self, signals: Mapping[str, float], *, undecodable: bool = False, media: bool = True) -> Decision:
        if not media:
            return Decision(self.on_non_media, "on_non_media", reason="not an image or video")
        if undecodable:
            return Decision(self.on_undecodable, "on_undecodable", reason="the media could not be decoded")
        for rule in self.rules:
            if all(c.signal in signals and c.holds(float(signals[c.signal])) for c in rule.conditions):
                reason = ", ".join(f"{c.signal}={float(signals[c.signal]):g} {c.op} {c.threshold:g}"
                                   for c in rule.conditions)
                return Decision(rule.action, rule.name, rule.category, reason)
        return Decision("allow", "", reason="no rule fired")

    def explain(self, signals: Mapping[str, float]) -> list[str]:
        lines = []
        fired = self.decide(signals)
        for rule in self.rules:
            parts = []
            for condition in rule.conditions:
                if condition.signal not in signals:
                    parts.append(f"{condition}: no such signal (rule cannot fire)")
                else:
                    value = float(signals[condition.signal])
                    parts.append(f"{condition}: {condition.signal} is {value:g} -> "
                                 f"{'holds' if condition.holds(value) else 'does not hold'}")
            mark = "FIRES" if rule.name == fired.rule else "-"
            lines.append(f"[{mark}] rule {rule.name!r} ({rule.action}{', ' + rule.category if rule.category else ''})")
            lines.extend(f"    {part}" for part in parts)
        lines.append(f"decision: {fired.action}" + (f" by rule {fired.rule!r}" if fired.rule else " (no rule fired)"))
        return lines

    @property
    def signals_used(self) -> list[str]:
        return sorted({c.signal for rule in self.rules for c in rule.conditions})


def _condition(rule: str, signal: str, text: Any) -> Condition:
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise PolicyError(f'rule "{rule}": when.{signal}: expected an operator and a number like ">= 0.5", '
                          f"got {text!r}")
    if isinstance(text, int | float):
        return Condition(signal, ">=", float(text))
    found = _CONDITION.match(text)
    if not found:
        raise PolicyError(f'rule "{rule}": when.{signal}: expected an operator and a number like ">= 0.5", '
                          f"got {text!r}")
    return Condition(signal, found.group(1), float(found.group(2)))


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise PolicyError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def preset_tables() -> dict[str, dict[str, Any]]:
    """The shipped presets, by name, as raw policy tables."""
    return tomllib.loads(PRESETS_FILE.read_text(encoding="utf-8"))


def with_preset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A raw policy with its `preset` expanded: the file's rules first, then the preset's; the file's settings
    win over the preset's."""
    merged = dict(raw)
    name = merged.pop("preset", None)
    if name is None:
        return merged
    if name not in PRESETS:
        raise PolicyError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    preset = dict(preset_tables()[name])
    own = merged.get("rule", [])
    if not isinstance(own, list):
        raise PolicyError("rule: expected [[rule]] tables")
    taken = {item.get("name") for item in own if isinstance(item, dict)}
    merged["rule"] = [*own, *(rule for rule in preset.pop("rule", []) if rule["name"] not in taken)]
    for key, value in preset.items():
        merged.setdefault(key, value)
    merged["preset"] = name
    return merged


def parse_policy(raw: Mapping[str, Any], *, source: str = "", digest: str = "") -> Policy:
    known = {"version", "preset", "on_undecodable", "on_non_media", "on_unavailable", "rule"}
    for key in raw:
        if key not in known:
            raise PolicyError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
    raw = with_preset(raw)
    rules: list[Rule] = []
    names: set[str] = set()
    raw_rules = raw.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("rule: expected [[rule]] tables")
    for index, item in enumerate(raw_rules):
        if not isinstance(item, dict):
            raise PolicyError(f"rule[{index}]: expected a table")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise PolicyError(f"rule[{index}].name: expected a short name of letters, digits, -, _ or ., got {name!r}")
        if name in names:
            raise PolicyError(f'rule "{name}": the name is used twice')
        names.add(name)
        for key in item:
            if key not in {"name", "when", "action", "category", "description"}:
                raise PolicyError(f'rule "{name}": {key}: unknown field (known: action, category, description, '
                                  "name, when)")
        when = item.get("when")
        if not isinstance(when, dict) or not when:
            raise PolicyError(f'rule "{name}": when: expected a table of signal = "operator number" conditions')
        conditions = tuple(_condition(name, str(signal), text) for signal, text in when.items())
        action = _choice(item.get("action"), ACTIONS, f'rule "{name}": action')
        category = item.get("category", "")
        if not isinstance(category, str):
            raise PolicyError(f'rule "{name}": category: expected a string, got {category!r}')
        rules.append(Rule(name, conditions, action, category, str(item.get("description", ""))))
    version = raw.get("version") or (f"sha256:{digest[:16]}" if digest else "")
    return Policy(
        tuple(rules),
        on_undecodable=_choice(raw.get("on_undecodable", "flag"), ACTIONS, "on_undecodable"),
        on_non_media=_choice(raw.get("on_non_media", "reject"), ACTIONS, "on_non_media"),
        on_unavailable=_choice(raw.get("on_unavailable", "defer"), UNAVAILABLE, "on_unavailable"),
        version=str(version),
        source=source,
        preset=str(raw.get("preset", "")),
    )


def load_preset(name: str) -> Policy:
    """One shipped preset on its own, as a policy."""
    return parse_policy({"preset": name}, source=f"preset {name}",
                        digest=hashlib.sha256(PRESETS_FILE.read_bytes() + name.encode()).hexdigest())


CLIP_PACK_KINDS = ("clip-concepts", "test")


def clip_rules(policy: Policy) -> list[Rule]:
    """The rules that read a CLIP concept signal."""
    return [rule for rule in policy.rules if any(c.signal.startswith("clip_") for c in rule.conditions)]


def calibration_problems(policy: Policy, packs: Iterable[tuple[str, str, bool]]) -> list[str]:
    """One line per (CLIP rule, uncalibrated CLIP pack): `packs` are (name, kind, calibrated) of the loaded packs.

    The reference thresholds were set on CLIP ViT-L-14/openai; on any other tower (or the test pack) a
    `clip_*` rule fires on numbers that mean something else.
    """
    rules = clip_rules(policy)
    return [f"rule {rule.name!r} reads {', '.join(sorted({c.signal for c in rule.conditions}))} but pack "
            f"{name!r} ({kind}) is not calibrated for its concept thresholds: its clip_* signals mean nothing "
            "against them (recalibrate the thresholds, or build the pack from ViT-L-14/openai)"
            for name, kind, calibrated in packs if kind in CLIP_PACK_KINDS and not calibrated for rule in rules]


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy file (or the shipped default); PolicyError names the file, the rule and the field."""
    path = Path(path) if path else DEFAULT_POLICY
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_policy(raw, source=str(path), digest=hashlib.sha256(data).hexdigest())
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
