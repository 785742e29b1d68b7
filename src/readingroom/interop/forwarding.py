"""Forwarding rules: complete studies that match a rule are sent to a remote DICOM peer or DICOMweb endpoint.

A rule matches on facts of the study and its case (modality, site code,
description regex, priority, canonical procedure) and names one
destination. Matching only *enqueues* work in the durable outbox
(``interop.outbox``), in the transaction that reads the ``study.complete``
event, so a forward is never lost and never done twice for one cause
(``dedupe_key fwd:{rule}:{study}``); the outbox delivers it with retries,
and keeps it queued while the destination is down (downtime mode).

The delivery handlers themselves ('c-store', 'stow-rs') live in
``forward_delivery.py``; this module holds the rules and the consumer.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import DomainEvent, Study
from readingroom.archive.stability import STUDY_COMPLETE
from readingroom.clock import utcnow
from readingroom.consumers import consume
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.interop import outbox
from readingroom.interop.models import Destination, ForwardingRule, OutboxItem
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case

log = logging.getLogger(__name__)

CONSUMER = "interop.forwarding"
MATCH_KEYS = ("modality", "site", "description", "priority", "procedure")
PRIORITIES = ("stat", "urgent", "routine", "low")
#: destination kind -> outbox operation that sends a study there
OPERATIONS = {"dicom": "c-store", "dicomweb": "stow-rs"}


class ForwardingError(ValueError):
    """A rule or forward request that cannot be accepted; the message says why (HTTP 4xx)."""


class RuleNotFound(ForwardingError, LookupError):
    """No forwarding rule with that id."""


@dataclass(frozen=True)
class StudyFacts:
    """What a rule can match on, gathered once per study."""

    study_uid: str
    modalities: tuple[str, ...]
    site: str
    site_id: int | None
    description: str
    priority: str
    procedure: str

    def as_dict(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities), "site": self.site, "description": self.description,
                "priority": self.priority, "procedure": self.procedure}


# -- rules ----------------------------------------------------------------------------------------------------


def validate_match(match: dict[str, Any]) -> dict[str, str]:
    """The normalised match document; unknown keys, bad regexes and unknown priorities are refused."""
    unknown = set(match) - set(MATCH_KEYS)
    if unknown:
        raise ForwardingError(f"unknown match key(s) {sorted(unknown)}; allowed: {list(MATCH_KEYS)}")
    out: dict[str, str] = {}
    for key, value in match.items():
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ForwardingError(f"match.{key} must be a string")
        out[key] = value.strip()
    if "description" in out:
        try:
            re.compile(out["description"])
        except re.error as exc:
            raise ForwardingError(f"match.description is not a valid regular expression: {exc}") from exc
    if "priority" in out:
        out["priority"] = out["priority"].lower()
        if out["priority"] not in PRIORITIES:
            raise ForwardingError(f"match.priority must be one of {list(PRIORITIES)}")
    if "modality" in out:
        out["modality"] = out["modality"].upper()
    return out


def destination_for_forwarding(session: Session, name_or_id: str | int) -> Destination:
    """A destination studies can be sent to (kind 'dicom' with a peer, or 'dicomweb' with a URL)."""
    q = select(Destination)
    q = q.where(Destination.id == name_or_id) if isinstance(name_or_id, int) else \
        q.where(Destination.name == name_or_id)
    dest = session.scalars(q).first()
    if dest is None:
        raise ForwardingError(f"no destination {name_or_id!r}")
    if dest.kind not in OPERATIONS:
        raise ForwardingError(f"destination {dest.name!r} is of kind {dest.kind!r}; studies go to 'dicom' "
                              "or 'dicomweb' destinations")
    if dest.kind == "dicom" and dest.peer_id is None:
        raise ForwardingError(f"destination {dest.name!r} has no DICOM peer")
    if dest.kind == "dicomweb" and not dest.url:
        raise ForwardingError(f"destination {dest.name!r} has no URL")
    return dest


def create_rule(session: Session, *, name: str, match: dict[str, Any], destination: str | int,
                enabled: bool = True, actor: str = "system") -> ForwardingRule:
    """Add a rule (audited as ``forwarding_rule.create``); names are unique."""
    name = name.strip()
    if not name or len(name) > 64:
        raise ForwardingError("a rule needs a name of 1-64 characters")
    if session.scalars(select(ForwardingRule.id).where(ForwardingRule.name == name)).first() is not None:
        raise ForwardingError(f"a forwarding rule named {name!r} exists")
    dest = destination_for_forwarding(session, destination)
    rule = ForwardingRule(name=name, match=validate_match(match), destination_id=dest.id, enabled=enabled,
                          created_at=utcnow(), created_by=actor)
    session.add(rule)
    session.flush()
    audit.record(session, actor=actor, action="forwarding_rule.create", resource_type="forwarding_rule",
                 resource_id=str(rule.id), detail={"name": name, "match": rule.match, "destination": dest.name,
                                                   "enabled": enabled})
    return rule


def update_rule(session: Session, rule_id: int, *, match: dict[str, Any] | None = None,
                destination: str | int | None = None, enabled: bool | None = None,
                actor: str = "system") -> ForwardingRule:
    """Change a rule's match, destination or enabled flag (audited)."""
    rule = get_rule(session, rule_id)
    changes: dict[str, Any] = {}
    if match is not None:
        rule.match = changes["match"] = validate_match(match)
    if destination is not None:
        dest = destination_for_forwarding(session, destination)
        rule.destination_id = dest.id
        changes["destination"] = dest.name
    if enabled is not None:
        rule.enabled = changes["enabled"] = enabled
    session.flush()
    audit.record(session, actor=actor, action="forwarding_rule.update", resource_type="forwarding_rule",
                 resource_id=str(rule.id), detail={"name": rule.name, **changes})
    return rule


def delete_rule(session: Session, rule_id: int, *, actor: str = "system") -> None:
    """Remove a rule (queued forwards it caused stay queued; audited)."""
    rule = get_rule(session, rule_id)
    session.delete(rule)
    audit.record(session, actor=actor, action="forwarding_rule.delete", resource_type="forwarding_rule",
                 resource_id=str(rule_id), detail={"name": rule.name})


def get_rule(session: Session, rule_id: int) -> ForwardingRule:
    rule = session.get(ForwardingRule, rule_id)
    if rule is None:
        raise RuleNotFound(f"no forwarding rule {rule_id}")
    return rule


def list_rules(session: Session) -> list[ForwardingRule]:
    return list(session.scalars(select(ForwardingRule).order_by(ForwardingRule.name)))


# -- matching -------------------------------------------------------------------------------------------------


def study_facts(session: Session, study_uid: str) -> StudyFacts | None:
    """The study's matchable facts; priority and canonical procedure come from its case when it has one."""
    row = session.execute(select(Study, Site.code).outerjoin(Site, Site.id == Study.site_id)
                          .where(Study.study_uid == study_uid)).first()
    if row is None:
        return None
    study, site_code = row
    case = session.scalars(select(Case).where(Case.study_pk == study.id)).first()
    return StudyFacts(
        study_uid=study_uid, modalities=tuple(m for m in (study.modalities or "").split("\\") if m),
        site=site_code or "", site_id=study.site_id, description=study.description or "",
        priority=(case.priority if case else "routine") or "routine",
        procedure=(case.procedure_code if case else "") or "",
    )


def rule_matches(match: dict[str, Any], facts: StudyFacts) -> bool:
    """Every key present in ``match`` must hold (an empty match forwards every study)."""
    if "modality" in match and match["modality"].upper() not in facts.modalities:
        return False
    if "site" in match and match["site"] != facts.site:
        return False
    if "description" in match and not re.search(match["description"], facts.description, re.IGNORECASE):
        return False
    if "priority" in match and match["priority"] != facts.priority:
        return False
    return not ("procedure" in match and match["procedure"] != facts.procedure)


def enqueue_forward(session: Session, dest: Destination, study_uid: str, dedupe_key: str,
                    *, cause: dict[str, Any]) -> OutboxItem:
    """The outbox item sending ``study_uid`` to ``dest`` (the existing one when this cause queued it before)."""
    return outbox.enqueue(session, dest.id, OPERATIONS[dest.kind], dedupe_key, study_uid=study_uid,
                          payload=json.dumps(cause))


def apply_rules(session: Session, study_uid: str) -> list[OutboxItem]:
    """Enqueue one forward per enabled rule the study matches; idempotent per (rule, study)."""
    facts = study_facts(session, study_uid)
    if facts is None or is_internal_study(session, study_uid):
        return []
    queued: list[OutboxItem] = []
    rules = session.execute(select(ForwardingRule, Destination).join(
        Destination, Destination.id == ForwardingRule.destination_id).where(
        ForwardingRule.enabled.is_(True)).order_by(ForwardingRule.id)).all()
    for rule, dest in rules:
        if not dest.enabled or dest.kind not in OPERATIONS or not rule_matches(rule.match or {}, facts):
            continue
        queued.append(enqueue_forward(session, dest, study_uid, f"fwd:{rule.id}:{study_uid}",
                                      cause={"rule": rule.name, "facts": facts.as_dict()}))
    return queued


def is_internal_study(session: Session, study_uid: str) -> bool:
    """A prior fetched from a remote PACS or a go-live test study: never forwarded, never a case."""
    return bool(session.scalar(select(Study.origin).where(Study.study_uid == study_uid)))


def forward_completed(rt: Runtime, batch: int = 200) -> int:
    """Scheduler job: consume ``study.complete`` events, enqueue the forwards they cause; returns how many.

    The offset row is locked (PostgreSQL) or the transaction is the only
    writer (SQLite), and the dedupe key makes a replayed event harmless, so
    several processes can run this at once.
    """
    return consume(rt, CONSUMER, _completed_after, lambda s, row: len(apply_rules(s, row[1])), batch=batch)


def _completed_after(session: Session, position: int, batch: int) -> Sequence[Any]:
    return session.execute(select(DomainEvent.id, DomainEvent.subject).where(
        DomainEvent.id > position, DomainEvent.kind == STUDY_COMPLETE).order_by(DomainEvent.id).limit(batch)).all()


def forward_now(session: Session, study_uid: str, destination: str | int, *, actor: str) -> OutboxItem:
    """Queue one study for a destination now (manual forward; audited). A repeat queues it again."""
    if session.scalar(select(Study.id).where(Study.study_uid == study_uid)) is None:
        raise ForwardingError(f"no study {study_uid}")
    dest = destination_for_forwarding(session, destination)
    key = f"manual:{study_uid}:{utcnow().isoformat()}"
    item = enqueue_forward(session, dest, study_uid, key, cause={"manual": actor})
    audit.record(session, actor=actor, action="study.forward", resource_type="study", resource_id=study_uid,
                 detail={"destination": dest.name, "outbox_item": item.id})
    return item


def forwarding_status(session: Session, study_uid: str) -> list[dict[str, Any]]:
    """Every forward of a study (from the outbox): destination, state, attempts, counts, last error."""
    rows = session.execute(select(OutboxItem, Destination.name).join(
        Destination, Destination.id == OutboxItem.destination_id).where(
        OutboxItem.study_uid == study_uid, OutboxItem.operation.in_(tuple(OPERATIONS.values())))
        .order_by(OutboxItem.id)).all()
    return [{"id": item.id, "destination": name, "operation": item.operation, "state": item.state,
             "attempts": item.attempts, "dedupe_key": item.dedupe_key, "last_error": item.last_error,
             "result": item.result or {}, "created_at": item.created_at, "delivered_at": item.delivered_at,
             "next_attempt_at": item.next_attempt_at} for item, name in rows]
