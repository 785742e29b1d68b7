"""What routing decides: the decision record and its explanation.

Kept apart from :mod:`readingroom.workflow.routing` so the code that stores,
shows or replays decisions need not know how they are made. The explanation
is a plain JSON-serialisable dict, stored with the routing event
(architecture principle 2): the rule matched, the eligible readers in push
order, and every excluded reader with every reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from readingroom.workflow.compiled import ActionSet, CompiledRules
from readingroom.workflow.eligibility import Exclusion, Needs
from readingroom.workflow.enums import EscalationAction, Mode, Priority, Reason
from readingroom.workflow.facts import NO_LOAD, CaseFacts, ReaderLoad, SiteFacts

ENGINE = "readingroom.workflow.routing/1"
NO_ELIGIBLE_READER = "NO_ELIGIBLE_READER"
UNKNOWN_SITE = "UNKNOWN_SITE"


@dataclass(frozen=True, slots=True)
class EscalationPoint:
    """One rung of a case's SLA ladder as an absolute instant, for the SLA scheduler."""

    at: datetime
    at_percent: float
    action: EscalationAction
    notify: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Everything decided about a case, with ``explanation`` ready to store on the routing event."""

    case_id: str
    at: datetime
    rules_name: str
    rules_version: int
    rule_id: str | None
    rules_matched: tuple[str, ...]
    priority: Priority
    priority_source: str
    sort_priority: Priority
    mode: Mode
    required_subspecialties: frozenset[str]
    required_qualifications: frozenset[str]
    second_reader: bool
    sla_deadline: datetime
    escalation: tuple[EscalationPoint, ...]
    overflowed: bool
    eligible: tuple[str, ...]
    assignee: str | None
    second_assignee: str | None
    excluded: Mapping[str, Sequence[Exclusion]]
    exception: str | None
    explanation: dict[str, Any]


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def explain(
    d: RoutingDecision,
    site: SiteFacts,
    needs: Needs,
    actions: ActionSet,
    *,
    raised_by: tuple[str, ...],
    widened_by: str | None,
    waited: float,
    ranked: list[tuple[int, float, float, str]],
    loads: Mapping[str, ReaderLoad],
    on_call: list[str],
    counts: Mapping[Reason, int],
) -> dict[str, Any]:
    """The JSON-serialisable record of a decision, stored with the routing event."""
    prefer = actions.prefer_subspecialties
    overflow = actions.overflow
    why_assignee = None
    if d.assignee is not None:
        load = loads.get(d.assignee, NO_LOAD)
        rank = ranked[0][0]
        peers = sum(1 for r in ranked if r[0] == rank)
        why_assignee = f"least outstanding RVU ({load.outstanding_rvu:g}) among {peers}"
        if prefer and rank < len(prefer):
            why_assignee += f" reading {prefer[rank]} (preferred: {', then '.join(prefer)}) of {len(ranked)} eligible"
        else:
            why_assignee += " eligible"
        if len(ranked) > 1 and ranked[1][:2] == ranked[0][:2]:
            why_assignee += f"; tie broken by longest idle (since {_iso(load.idle_since) or 'unknown'})"
    rule_text = f"rule {d.rule_id}" if d.rule_id else "no rule matched, defaults"
    if d.exception:
        summary = f"no eligible reader for case {d.case_id} ({rule_text}): {len(d.excluded)} excluded"
    elif d.assignee:
        summary = f"case {d.case_id} goes to {d.assignee} ({rule_text}, push): {why_assignee}"
    else:
        summary = f"case {d.case_id} is listed for {len(d.eligible)} readers ({rule_text}, {d.mode.value})"
    if counts:
        summary += "; excluded " + ", ".join(f"{k.value.lower()} {v}" for k, v in sorted(counts.items()))
    return {
        "engine": ENGINE,
        "at": _iso(d.at),
        "case": d.case_id,
        "site": site.code,
        "rules": {"name": d.rules_name, "version": d.rules_version},
        "rule": d.rule_id,
        "rules_matched": list(d.rules_matched),
        "priority": {
            "value": d.priority.value,
            "source": d.priority_source,
            "raised_by": list(raised_by),
            "sort": d.sort_priority.value,
        },
        "mode": d.mode.value,
        "second_reader": d.second_reader,
        "requires": {
            "jurisdiction": site.jurisdiction,
            "credentialed_at": site.code,
            "residency": site.residency_tag or None,
            "subspecialty": sorted(needs.subspecialties),
            "qualifications": sorted(needs.qualifications),
            "pools": list(actions.pools),
            "sites_allowed": sorted(needs.sites_allowed) if needs.sites_allowed is not None else None,
            "prefer_subspecialty": list(prefer),
        },
        "overflow": {
            "after_minutes": overflow.after_minutes if overflow is not None else None,
            "pools": list(overflow.pools) if overflow is not None else [],
            "waited_minutes": round(waited, 2),
            "widened": widened_by is not None,
            "why": widened_by,
        },
        "sla": {
            "minutes": actions.sla_minutes[d.priority],
            "deadline": _iso(d.sla_deadline),
            "escalation": [
                {"at": _iso(p.at), "at_percent": p.at_percent, "action": p.action.value, "notify": list(p.notify)}
                for p in d.escalation
            ],
        },
        "eligible": list(d.eligible),
        "on_call": on_call,
        "assignee": d.assignee,
        "second_assignee": d.second_assignee,
        "why_assignee": why_assignee,
        "excluded": {user: [r.json for r in reasons] for user, reasons in d.excluded.items()},
        "excluded_counts": {code.value: n for code, n in sorted(counts.items())},
        "exception": d.exception,
        "summary": summary,
    }


def unroutable(case: CaseFacts, rules: CompiledRules, now: datetime, why: str) -> RoutingDecision:
    """A decision for a case that cannot be evaluated at all: straight to the exception queue."""
    priority = case.priority or rules.defaults.priority
    deadline = case.ready_at + timedelta(minutes=rules.defaults.sla_minutes[priority])
    explanation = {
        "engine": ENGINE,
        "at": _iso(now),
        "case": case.case_id,
        "site": case.site,
        "rules": {"name": rules.name, "version": rules.version},
        "rule": None,
        "exception": UNKNOWN_SITE,
        "summary": why,
        "eligible": [],
        "excluded": {},
    }
    return RoutingDecision(
        case_id=case.case_id,
        at=now,
        rules_name=rules.name,
        rules_version=rules.version,
        rule_id=None,
        rules_matched=(),
        priority=priority,
        priority_source="order" if case.priority else "defaults.priority",
        sort_priority=priority,
        mode=rules.defaults.mode,
        required_subspecialties=frozenset(),
        required_qualifications=frozenset(),
        second_reader=False,
        sla_deadline=deadline,
        escalation=(),
        overflowed=False,
        eligible=(),
        assignee=None,
        second_assignee=None,
        excluded={},
        exception=UNKNOWN_SITE,
        explanation=explanation,
    )
