"""Vocabulary shared by the routing rules, the facts and the decisions.

String enums, so a value reads the same in a YAML rules document, a JSON
explanation stored with a routing event and a Python comparison.
"""

from __future__ import annotations

from enum import StrEnum

_PRIORITY_ALIASES = {"p1": "critical", "p2": "stat", "p3": "urgent", "p4": "routine"}


class Priority(StrEnum):
    """How fast a case must be read; ``rank`` 1 is the most urgent.

    The issue names STAT / urgent / routine; the reference workload adds a
    critical tier above STAT (stroke, trauma, codes), so there are four.
    ``P1``..``P4`` (any case) are accepted as aliases, as the workload uses them.
    """

    CRITICAL = "critical"
    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @classmethod
    def _missing_(cls, value: object) -> Priority | None:
        if isinstance(value, str):
            key = value.strip().lower()
            key = _PRIORITY_ALIASES.get(key, key)
            for member in cls:
                if member.value == key:
                    return member
        return None

    @property
    def rank(self) -> int:
        """1 (critical) .. 4 (routine): lower sorts first on a worklist."""
        return _RANK[self]

    def raised_to(self, floor: Priority) -> Priority:
        """This priority, or ``floor`` when that is more urgent (a raise never lowers)."""
        return floor if floor.rank < self.rank else self


_RANK = {Priority.CRITICAL: 1, Priority.STAT: 2, Priority.URGENT: 3, Priority.ROUTINE: 4}


class Mode(StrEnum):
    """Push assigns the case to one reader; pull lists it for every eligible reader to claim."""

    PUSH = "push"
    PULL = "pull"


class SiteKind(StrEnum):
    """A site's role in a hub-and-spoke network."""

    HUB = "hub"
    SPOKE = "spoke"
    PARTNER = "partner"


class EscalationAction(StrEnum):
    """What the SLA scheduler does when a case reaches a step of its ladder."""

    WARN = "warn"
    RAISE_SORT_KEY = "raise_sort_key"
    WIDEN_POOL = "widen_pool"
    NOTIFY_ON_CALL = "notify_on_call"
    NOTIFY_SUPERVISOR = "notify_supervisor"
    EXCEPTION_QUEUE = "exception_queue"


class Reason(StrEnum):
    """Why a reader was excluded from a case; stored in every explanation."""

    NO_LICENCE = "NO_LICENCE"
    LICENCE_EXPIRED = "LICENCE_EXPIRED"
    NOT_CREDENTIALED = "NOT_CREDENTIALED"
    CREDENTIAL_EXPIRED = "CREDENTIAL_EXPIRED"
    SUBSPECIALTY = "SUBSPECIALTY"
    QUALIFICATION = "QUALIFICATION"
    OFF_SHIFT = "OFF_SHIFT"
    OVER_CAPACITY = "OVER_CAPACITY"
    CONFLICT = "CONFLICT"
    RESIDENCY = "RESIDENCY"
    NOT_IN_POOL = "NOT_IN_POOL"
    SITE_NOT_ALLOWED = "SITE_NOT_ALLOWED"


WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
