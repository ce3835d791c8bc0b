"""The policy: named rules over signals, each with an action, read from a TOML file and validated.

    version = "2026-11"                 # optional; otherwise the file's SHA-256 names the version
    on_undecodable = "flag"             # media that cannot be decoded
    on_non_media = "allow"              # content types that are not image/* or video/*
    on_unavailable = "defer"            # detectors unreachable: defer | refuse | allow

    [[rule]]
    name = "minor-explicit"
    when = { explicit = ">= 0.6", p_minor = ">= 0.5" }   # every condition must hold
    action = "quarantine"                                 # allow | flag | quarantine | reject
    category = "csam"

Rules are tried in file order and the first whose conditions all hold decides; a rule naming a signal the
detectors did not produce does not fire. No expression is ever evaluated: conditions are parsed into
(operator, number) pairs.
"""

from __future__ import annotations

import hashlib
import operator
import re
import tomllib
from collections.abc import Callable, Mapping
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
    on_non_media: str = "allow"
    on_unavailable: str = "defer"
    version: str = ""
    source: str = ""

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


def parse_policy(raw: Mapping[str, Any], *, source: str = "", digest: str = "") -> Policy:
    known = {"version", "on_undecodable", "on_non_media", "on_unavailable", "rule"}
    for key in raw:
        if key not in known:
            raise PolicyError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
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
        on_non_media=_choice(raw.get("on_non_media", "allow"), ACTIONS, "on_non_media"),
        on_unavailable=_choice(raw.get("on_unavailable", "defer"), UNAVAILABLE, "on_unavailable"),
        version=str(version),
        source=source,
    )


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
