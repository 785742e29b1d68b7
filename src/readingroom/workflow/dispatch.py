"""Run the routing engine on a stored case and record the decision.

This is the bridge between the tables and the pure engine: rows become
SiteFacts / ReaderFacts / ReaderLoad / CaseFacts, ``route`` decides, and the
decision is applied as one ``routed`` (or ``unroutable``) event carrying the
full explanation, with the eligible readers written as the case's candidates.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import Site, User
from readingroom.workflow import exceptions
from readingroom.workflow.cases import SYSTEM, Actor, get_case, log_event, transition
from readingroom.workflow.decision import RoutingDecision
from readingroom.workflow.enums import Priority
from readingroom.workflow.facts import CaseFacts, ReaderFacts, ReaderLoad, SiteFacts
from readingroom.workflow.models import (
    Case,
    CaseCandidate,
    CaseEvent,
    ReaderCredential,
    ReaderLicence,
    ReaderProfile,
)
from readingroom.workflow.routing import dry_run, route
from readingroom.workflow.rulestore import active_rules
from readingroom.workflow.states import OPEN_STATES, CaseState

#: Priority sources that routing keeps (an order, a supervisor, an AI finding, the requester of a child read).
EXPLICIT_PRIORITY = ("order", "admin", "ai", "request")


def load_sites(session: Session) -> tuple[dict[str, SiteFacts], dict[int, str]]:
    """Sites as routing facts keyed by code, and site id -> code."""
    facts: dict[str, SiteFacts] = {}
    codes: dict[int, str] = {}
    for site in session.scalars(select(Site)):
        codes[site.id] = site.code
        facts[site.code] = SiteFacts(code=site.code, timezone=site.timezone or "UTC",
                                     jurisdiction=site.jurisdiction, kind=site.kind,
                                     residency_tag=site.residency_tag)
    return facts, codes


def load_readers(session: Session, site_codes: dict[int, str]) -> tuple[list[ReaderFacts], dict[str, int]]:
    """Active users with a reader profile as routing facts, and username -> user id."""
    licences: dict[int, dict[str, Any]] = defaultdict(dict)
    for lic in session.scalars(select(ReaderLicence)):
        licences[lic.reader_id][lic.jurisdiction] = lic.expires_on
    creds: dict[int, dict[str, Any]] = defaultdict(dict)
    for cred in session.scalars(select(ReaderCredential)):
        if cred.site_id in site_codes:
            creds[cred.reader_id][site_codes[cred.site_id]] = cred.expires_on
    readers: list[ReaderFacts] = []
    ids: dict[str, int] = {}
    rows = session.execute(
        select(ReaderProfile, User).join(User, User.id == ReaderProfile.user_id).where(User.active.is_(True))
    ).all()
    for profile, user in rows:
        ids[user.username] = user.id
        readers.append(ReaderFacts(
            username=user.username,
            home_site=site_codes.get(profile.home_site_id or -1),
            timezone=profile.timezone or "UTC",
            subspecialties=frozenset(profile.subspecialties or []),
            qualifications=frozenset(profile.qualifications or []),
            licences=licences.get(profile.id, {}),
            credentials=creds.get(profile.id, {}),
            shifts=tuple(profile.shifts or ()),
            capacity_rvu_per_hour=profile.capacity_rvu_per_hour,
            on_call=profile.on_call,
            residency_tags=frozenset(profile.residency_tags or []),
            aliases=frozenset(profile.aliases or []),
        ))
    return readers, ids


def load_loads(session: Session, ids: dict[str, int]) -> dict[str, ReaderLoad]:
    """Each reader's outstanding work: open cases assigned to or claimed by them."""
    by_id = {v: k for k, v in ids.items()}
    owner = func.coalesce(Case.claimed_by, Case.assignee)
    rows = session.execute(
        select(owner, func.coalesce(func.sum(Case.rvu), 0.0), func.count())
        .where(Case.state.in_([s.value for s in OPEN_STATES]), owner.is_not(None))
        .group_by(owner)
    ).all()
    idle = dict(session.execute(select(ReaderProfile.user_id, ReaderProfile.idle_since)).all())
    loads = {}
    for user_id, username in by_id.items():
        loads[username] = ReaderLoad(idle_since=idle.get(user_id))
    for user_id, rvu, n in rows:
        if user_id in by_id:
            loads[by_id[user_id]] = ReaderLoad(outstanding_rvu=float(rvu), assigned_count=int(n),
                                               idle_since=None)
    return loads


def case_facts(case: Case, site_codes: dict[int, str]) -> CaseFacts:
    explicit = case.priority_source in EXPLICIT_PRIORITY
    request = case.routing_request or {}
    return CaseFacts(
        case_id=str(case.id), site=site_codes.get(case.site_id or -1, ""), modality=case.modality or "",
        ready_at=case.ready_at or case.created_at, body_part=case.body_part or "", description=case.description or "",
        priority=Priority(case.priority) if explicit else None, patient_class=case.patient_class or "",
        patient_age_years=case.patient_age_years, flags=frozenset(case.flags or []),
        order={k: str(v) for k, v in (case.order_fields or {}).items()},
        ordering_physician=case.ordering_physician or "", rvu=case.rvu, pool_widened=case.pool_widened,
        conflicted_readers=frozenset(request.get("exclude") or ()),
        required_subspecialties=frozenset(request.get("subspecialties") or ()),
        named_readers=frozenset(request.get("readers") or ()), sla_minutes=request.get("sla_minutes"),
        procedure=case.procedure_code or "",
    )


def decide(session: Session, case_id: int, now: datetime | None = None, *, trace: bool = False,
           cache_key: str = "") -> tuple[RoutingDecision, dict[str, int], int]:
    """The decision for a case now, without storing anything (also the dry run)."""
    now = now or utcnow()
    case = get_case(session, case_id)
    sites, codes = load_sites(session)
    readers, ids = load_readers(session, codes)
    loads = load_loads(session, ids)
    rules, version = active_rules(session, cache_key)
    facts = case_facts(case, codes)
    fn = dry_run if trace else route
    return fn(facts, readers, sites, rules, now, loads), ids, version


def _last_routing_overflowed(session: Session, case_id: int) -> bool:
    data = session.scalar(select(CaseEvent.data).where(CaseEvent.case_id == case_id, CaseEvent.kind == "routed")
                          .order_by(CaseEvent.id.desc()).limit(1))
    return bool(data and (data.get("overflow") or {}).get("widened"))


def digest(decision: RoutingDecision) -> str:
    """What a worklist shows of a decision; a re-route that changes none of it is not logged."""
    key = json.dumps([sorted(decision.eligible), decision.assignee, decision.overflowed, decision.priority.value,
                      decision.sort_priority.value, decision.mode.value, decision.rule_id, decision.exception,
                      decision.sla_deadline.isoformat()])
    return hashlib.sha1(key.encode()).hexdigest()


def _plan(decision: RoutingDecision, step: int) -> tuple[list[dict[str, Any]], datetime | None]:
    plan = [{"at": p.at.isoformat(), "at_percent": p.at_percent, "action": p.action.value,
             "notify": list(p.notify)} for p in decision.escalation]
    nxt = decision.escalation[step].at if step < len(decision.escalation) else None
    return plan, nxt


def route_case(session: Session, case_id: int, *, actor: Actor = SYSTEM, reason: str = "",
               cache_key: str = "", only_if_changed: bool = False) -> RoutingDecision | None:
    """Route (or re-route) a case and record the decision as an event.

    With ``only_if_changed`` (the periodic refresh that lets readers coming on
    shift see waiting work) nothing is written unless the outcome differs.
    """
    now = utcnow()
    decision, ids, version = decide(session, case_id, now, cache_key=cache_key)
    case = get_case(session, case_id)
    new_digest = digest(decision)
    if only_if_changed and new_digest == case.routing_digest:
        return None
    explanation = dict(decision.explanation)
    if reason:
        explanation["trigger"] = reason
    plan, next_at = _plan(decision, case.escalation_step)
    if decision.exception:
        if case.state in (CaseState.NEW.value, CaseState.AVAILABLE.value):
            transition(session, case_id, "unroutable", actor, data=explanation, values={
                "rule_id": decision.rule_id or "", "rules_version": version, "routing_digest": new_digest,
                "deadline": decision.sla_deadline, "assignee": None, "routed_at": now,
                "escalation_plan": plan, "next_escalation_at": next_at})
            session.execute(delete(CaseCandidate).where(CaseCandidate.case_id == case_id))
            exceptions.raise_item(session, case_id=case_id, kind="no_eligible_reader",
                                  reason=explanation.get("summary", decision.exception))
        return decision
    assignee = ids.get(decision.assignee) if decision.assignee else None
    was_overflowed = _last_routing_overflowed(session, case_id)
    if case.state == CaseState.EXCEPTION.value:
        exceptions.resolve_for_case(session, case_id, actor=actor.name, resolution="routed")
    transition(session, case_id, "routed", actor, data=explanation, values={
        "priority": decision.priority.value, "priority_rank": decision.sort_priority.rank,
        "priority_source": case.priority_source if case.priority_source in EXPLICIT_PRIORITY
        else decision.priority_source,
        "mode": decision.mode.value, "rule_id": decision.rule_id or "", "rules_version": version,
        "required_subspecialty": ",".join(sorted(decision.required_subspecialties)),
        "second_reader_required": decision.second_reader, "deadline": decision.sla_deadline,
        "assignee": assignee,
        "routing_digest": new_digest, "routed_at": now, "escalation_plan": plan, "next_escalation_at": next_at,
    })
    if decision.overflowed and not was_overflowed:
        log_event(session, case_id, "overflowed", actor, case.state, CaseState.AVAILABLE.value,
                  {"summary": explanation.get("summary", ""), "trigger": reason}, now)
    session.execute(delete(CaseCandidate).where(CaseCandidate.case_id == case_id))
    eligible = [ids[u] for u in decision.eligible if u in ids]
    if eligible:
        session.execute(insert(CaseCandidate), [{"case_id": case_id, "user_id": uid} for uid in eligible])
    return decision
