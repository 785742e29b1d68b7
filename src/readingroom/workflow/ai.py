"""Findings from external AI engines: flags on the case, then a re-route.

An AI engine (sent studies by a forwarding rule) posts what it found; the
finding becomes a case flag (``AI_<CODE>``) and an event, and the case is
re-routed so the rules can raise its priority. A negative finding is
recorded but raises nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Study
from readingroom.workflow.cases import Actor, get_case, transition
from readingroom.workflow.dispatch import route_case
from readingroom.workflow.models import Case
from readingroom.workflow.states import CaseState


class NoCaseForStudy(LookupError):
    pass


def flag_name(finding_code: str) -> str:
    code = finding_code.strip().upper().replace(" ", "_").replace("-", "_")
    return code if code.startswith("AI_") else f"AI_{code}"


def record_finding(session: Session, study_uid: str, *, finding_code: str, confidence: float | None,
                   positive: bool, actor: Actor, detail: dict[str, Any] | None = None,
                   cache_key: str = "") -> Case:
    """Flag the study's case with an AI finding and re-route it by the rules."""
    case_id = session.scalar(select(Case.id).join(Study, Study.id == Case.study_pk)
                             .where(Study.study_uid == study_uid))
    if case_id is None:
        raise NoCaseForStudy(f"no case for study {study_uid}")
    case = get_case(session, case_id)
    flag = flag_name(finding_code)
    flags = sorted(set(case.flags or []) | ({flag} if positive else set()))
    data = {"finding": finding_code, "flag": flag, "positive": positive, "confidence": confidence,
            **(detail or {})}
    transition(session, case_id, "flagged", actor, data=data, values={"flags": flags})
    if positive and case.state in (CaseState.AVAILABLE.value, CaseState.NEW.value, CaseState.EXCEPTION.value):
        if case.priority_source == "ai":
            session.execute(update(Case).where(Case.id == case_id).values(priority_source="rules"))
        route_case(session, case_id, actor=actor, reason=f"AI finding {flag}", cache_key=cache_key)
    return get_case(session, case_id)
