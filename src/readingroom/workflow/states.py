"""The case state machine: which event may happen in which state.

Pure data and two functions, so the API, the scheduler, the simulator and the
property tests all share one definition. An event either moves the case to a
new state or leaves it where it is (escalations, priority changes); any other
combination is illegal and is refused with a reason (HTTP 409).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class CaseState(StrEnum):
    WAITING = "waiting"  # an order whose images have not arrived
    NEW = "new"  # images complete, not yet routed
    AVAILABLE = "available"  # routed: on eligible readers' worklists (or assigned, push)
    CLAIMED = "claimed"  # one reader owns the read
    PRELIMINARY = "preliminary"  # preliminary report issued
    FINAL = "final"  # signed; addenda do not change the state
    EXCEPTION = "exception"  # needs a person: no eligible reader, unreadable, mismatch
    CANCELLED = "cancelled"


S = CaseState
OPEN_STATES = frozenset({S.WAITING, S.NEW, S.AVAILABLE, S.CLAIMED, S.PRELIMINARY, S.EXCEPTION})
TERMINAL_STATES = frozenset({S.FINAL, S.CANCELLED})
_ACTIVE = frozenset({S.NEW, S.AVAILABLE, S.CLAIMED, S.PRELIMINARY, S.EXCEPTION})

#: event kind -> (states it may happen in, state it leads to; None = unchanged)
TRANSITIONS: dict[str, tuple[frozenset[CaseState], CaseState | None]] = {
    "images_arrived": (frozenset({S.WAITING}), S.NEW),
    "routed": (frozenset({S.NEW, S.AVAILABLE, S.EXCEPTION}), S.AVAILABLE),
    "unroutable": (frozenset({S.NEW, S.AVAILABLE}), S.EXCEPTION),
    "claimed": (frozenset({S.AVAILABLE}), S.CLAIMED),
    "released": (frozenset({S.CLAIMED}), S.AVAILABLE),
    "claim_expired": (frozenset({S.CLAIMED}), S.AVAILABLE),
    "reassigned": (frozenset({S.AVAILABLE, S.CLAIMED, S.EXCEPTION}), S.CLAIMED),
    "preliminary": (frozenset({S.CLAIMED}), S.PRELIMINARY),
    "completed": (frozenset({S.CLAIMED, S.PRELIMINARY}), S.FINAL),
    "addended": (frozenset({S.FINAL}), None),
    # Reports (collab/reports.py): signing the final is how a read with a report completes.
    "report.drafted": (frozenset({S.CLAIMED, S.PRELIMINARY}), None),
    "report.preliminary": (frozenset({S.CLAIMED, S.PRELIMINARY}), S.PRELIMINARY),
    "report.final": (frozenset({S.CLAIMED, S.PRELIMINARY}), S.FINAL),
    "report.addended": (frozenset({S.FINAL}), None),
    "cancelled": (OPEN_STATES, S.CANCELLED),
    "escalated": (_ACTIVE, None),
    "overflowed": (frozenset({S.AVAILABLE}), None),
    "priority_changed": (OPEN_STATES, None),
    "order_changed": (OPEN_STATES, None),  # the RIS changed the order (interop.orders): fields, not state
    "order_linked": (OPEN_STATES, None),  # an order arriving after its study joined the case (interop.reconcile)
    "flagged": (OPEN_STATES, None),
    "exception_resolved": (frozenset({S.EXCEPTION}), S.NEW),
    # ADT^A40 (interop/merge.py): the case now belongs to the surviving patient record.
    "patient_merged": (frozenset(CaseState), None),
}
CREATION_EVENTS = {"received": S.NEW, "ordered": S.WAITING}


class IllegalTransition(Exception):
    """An event that may not happen in the case's current state."""

    def __init__(self, kind: str, state: str, reason: str | None = None) -> None:
        self.kind, self.state = kind, state
        super().__init__(reason or f"'{kind}' is not allowed while the case is {state}")


class NotEligible(PermissionError):
    """The actor may not do this to this case (not eligible, not the owner)."""


def next_state(state: str, kind: str) -> CaseState:
    """The state after event ``kind`` in ``state``; IllegalTransition if not allowed."""
    if kind not in TRANSITIONS:
        raise IllegalTransition(kind, state, f"unknown event {kind!r}")
    allowed, target = TRANSITIONS[kind]
    current = CaseState(state)
    if current not in allowed:
        raise IllegalTransition(kind, state)
    return target or current


def allowed_from(kind: str) -> frozenset[CaseState]:
    return TRANSITIONS[kind][0]


def replay(kinds: Iterable[str]) -> CaseState:
    """The state an event log leads to (first event creates the case)."""
    it = iter(kinds)
    first = next(it)
    if first not in CREATION_EVENTS:
        raise IllegalTransition(first, "", f"a case log must start with a creation event, not {first!r}")
    state = CREATION_EVENTS[first]
    for kind in it:
        state = next_state(state, kind)
    return state
