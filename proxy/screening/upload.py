"""The screening seam: every object passes through a screen before it is written upstream.

The gateway builds an :class:`Upload` once the whole body is in hand (checked against its signature),
asks the screen for a :class:`Verdict`, and only writes upstream when the verdict lands the object.
Keeping evidence for what is stopped is the screen's job, not the gateway's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from proxy.storage.spool import SpooledBody

Action = Literal["allow", "flag", "quarantine", "reject", "refuse"]

#: Actions after which the object is written to the real bucket.
LANDING_ACTIONS: frozenset[str] = frozenset({"allow", "flag"})


@dataclass(frozen=True)
class Upload:
    """One complete object as a client sent it, before it lands."""

    bucket: str
    real_bucket: str
    key: str
    access_key: str
    content_type: str
    body: SpooledBody
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.body.size

    @property
    def sha256(self) -> str:
        return self.body.sha256

    @property
    def md5(self) -> str:
        return self.body.md5


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: str = ""
    reason: str = ""
    category: str = ""
    #: the quarantine item the screen recorded for this upload (a flag, quarantine or reject), if any
    record_id: str = ""

    @property
    def lands(self) -> bool:
        return self.action in LANDING_ACTIONS


Screen = Callable[[Upload], Awaitable[Verdict]]

ALLOW = Verdict("allow")


async def allow_all(upload: Upload) -> Verdict:
    """The screen used until a pipeline is configured: everything lands."""
    return ALLOW
