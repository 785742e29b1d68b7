"""Retention: which studies the rules make due, and which of those must be kept, and why.

A rule says "studies of this site (every site) and modality (any) may go
once they are older than N days". Retention periods are *minimums* set by
law and policy, so when several enabled rules match one study the longest
one governs: the study is due only once it is older than every matching
rule's ``min_age_days`` (a general 7-year rule never shortens a 10-year
mammography rule). A study's age counts from its Study Date, or from when
it was first received when the date is missing or malformed.

A due study is still kept when any of these holds, and the report says so:

* an active legal hold names the study or its patient (any issuer);
* a case on the study is not final or cancelled (its read is not done);
* it is a prior linked to such an open case (a reader is comparing with it);
* instances are still arriving (purging would race the ingest).

Everything is one SQL statement over the studies table, whatever its size:
the rules become a WHERE clause (few rules, so few terms), the governing
rule a CASE expression, and each keep-reason a correlated subquery that
only runs for rows the WHERE clause let through. The same statement,
narrowed to one study, re-checks that study inside its purge transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, not_, or_, select, true
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Series, Study
from readingroom.governance.models import LegalHold, RetentionRule
from readingroom.workflow.models import Case, CasePrior
from readingroom.workflow.states import TERMINAL_STATES

#: Sites a caller may act on: None for every site (network administrators and the CLI).
Scope = frozenset[int] | None

_TERMINAL = sorted(state.value for state in TERMINAL_STATES)


@dataclass(frozen=True)
class RuleView:
    """The parts of a rule the selection needs (detached from any session)."""

    id: int
    name: str
    site_id: int | None
    modality: str
    min_age_days: int

    @classmethod
    def of(cls, rule: RetentionRule) -> RuleView:
        return cls(rule.id, rule.name, rule.site_id, rule.modality, rule.min_age_days)


@dataclass(frozen=True)
class Reason:
    """Why a due study is kept: a stable ``code`` for programs and a sentence for people."""

    code: str
    text: str


@dataclass
class StudyDecision:
    """One due study and what the run did (or would do) with it."""

    study_pk: int
    study_uid: str
    patient_id: str
    site_id: int | None
    modalities: str
    study_date: str
    age_days: int | None
    rule_id: int
    rule: str
    instances: int
    bytes: int
    #: would_purge (dry run) | purged | keep | skipped (changed since selection) | failed
    action: str
    reasons: list[Reason] = field(default_factory=list)


def enabled_rules(session: Session) -> list[RuleView]:
    """Every enabled rule, in id order."""
    return [RuleView.of(r) for r in session.scalars(
        select(RetentionRule).where(RetentionRule.enabled.is_(True)).order_by(RetentionRule.id))]


def _is_dicom_date(column: Any) -> ColumnElement[bool]:
    """SQL: the column holds exactly eight digits (a DA value), on SQLite and PostgreSQL alike."""
    stripped = column
    for digit in "0123456789":
        stripped = func.replace(stripped, digit, "")
    return and_(func.length(column) == 8, stripped == "")


def _older_than(days: int, now: datetime) -> ColumnElement[bool]:
    """SQL: the study is more than ``days`` old (by Study Date, else by first receipt).

    Study Date has day precision: a study dated D is more than N days old once
    D < today - N (compared as YYYYMMDD text, which sorts like the date).
    """
    cutoff = now - timedelta(days=days)
    dated = _is_dicom_date(Study.study_date)
    return or_(and_(dated, Study.study_date < cutoff.strftime("%Y%m%d")),
               and_(not_(dated), Study.first_received_at < cutoff))


def _matches(rule: RuleView) -> ColumnElement[bool]:
    """SQL: the study falls under the rule (site, and a series of the rule's modality)."""
    conditions: list[ColumnElement[bool]] = []
    if rule.site_id is not None:
        conditions.append(Study.site_id == rule.site_id)
    if rule.modality:
        conditions.append(exists().where(Series.study_pk == Study.id, Series.modality == rule.modality))
    return and_(true(), *conditions)


def candidates(rules: Sequence[RuleView], now: datetime, scope: Scope = None) -> Select[Any] | None:
    """The due studies with their governing rule and keep-reason columns (None when no rule is enabled)."""
    if not rules:
        return None
    governing_first = sorted(rules, key=lambda r: (-r.min_age_days, r.id))
    matches = [(_matches(rule), rule) for rule in governing_first]
    due = and_(or_(*(m for m, _ in matches)),
               *(or_(not_(m), _older_than(rule.min_age_days, now)) for m, rule in matches))
    governing = case(*((m, rule.id) for m, rule in matches), else_=None)
    active_hold = LegalHold.released_at.is_(None)
    q = (
        select(
            Study.id, Study.study_uid, Study.study_date, Study.first_received_at, Study.site_id,
            Study.modalities, Study.num_instances, Study.size_bytes, Study.state, Study.patient_pk,
            Patient.patient_id,
            governing.label("rule_id"),
            select(func.min(LegalHold.id)).where(active_hold, LegalHold.study_uid != "",
                                                 LegalHold.study_uid == Study.study_uid)
            .scalar_subquery().label("study_hold"),
            select(func.min(LegalHold.id)).where(active_hold, LegalHold.patient_id != "",
                                                 LegalHold.patient_id == Patient.patient_id)
            .scalar_subquery().label("patient_hold"),
            select(func.min(Case.id)).where(Case.study_pk == Study.id, Case.state.not_in(_TERMINAL))
            .scalar_subquery().label("open_case"),
            select(func.min(CasePrior.case_id)).join(Case, Case.id == CasePrior.case_id)
            .where(CasePrior.study_pk == Study.id, Case.state.not_in(_TERMINAL))
            .scalar_subquery().label("open_prior_of"),
        )
        .join(Patient, Patient.id == Study.patient_pk)
        .where(due)
    )
    if scope is not None:
        q = q.where(Study.site_id.in_(sorted(scope)) if scope else false())
    return q.order_by(Study.id)


def age_days(study_date: str, first_received_at: datetime, now: datetime) -> int | None:
    """Whole days since the Study Date (else since first receipt); None for an impossible date."""
    if len(study_date) == 8 and study_date.isdigit():
        try:
            return (now.date() - date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:]))).days
        except ValueError:
            return None
    return (now - first_received_at).days


def reasons_for(row: Any, case_states: dict[int, str]) -> list[Reason]:
    """Why a candidate row must be kept (empty: it may be purged)."""
    reasons: list[Reason] = []
    if row.study_hold is not None:
        reasons.append(Reason("legal_hold", f"legal hold #{row.study_hold} on this study"))
    if row.patient_hold is not None:
        reasons.append(Reason("legal_hold", f"legal hold #{row.patient_hold} on patient {row.patient_id}"))
    if row.open_case is not None:
        state = case_states.get(row.open_case, "open")
        reasons.append(Reason("open_case", f"case #{row.open_case} is {state} (not final or cancelled)"))
    if row.open_prior_of is not None:
        state = case_states.get(row.open_prior_of, "open")
        reasons.append(Reason("prior_of_open_case",
                              f"prior study of case #{row.open_prior_of}, which is {state}"))
    if row.state == "receiving":
        reasons.append(Reason("receiving", "instances are still arriving"))
    return reasons


def case_states(session: Session, rows: Sequence[Any]) -> dict[int, str]:
    """Current state of the open cases the rows mention (one query)."""
    ids = {cid for row in rows for cid in (row.open_case, row.open_prior_of) if cid is not None}
    if not ids:
        return {}
    return {row.id: row.state for row in session.execute(select(Case.id, Case.state).where(Case.id.in_(sorted(ids))))}


def decide(session: Session, rules: Sequence[RuleView], now: datetime, scope: Scope = None) -> list[StudyDecision]:
    """Every due study with its verdict: ``would_purge``, or ``keep`` with the reasons."""
    q = candidates(rules, now, scope)
    if q is None:
        return []
    rows = session.execute(q).all()
    states = case_states(session, rows)
    names = {rule.id: rule.name for rule in rules}
    return [decision_for(row, states, names, now) for row in rows]


def decision_for(row: Any, states: dict[int, str], names: dict[int, str], now: datetime) -> StudyDecision:
    """The decision of one candidate row."""
    reasons = reasons_for(row, states)
    return StudyDecision(
        study_pk=row.id, study_uid=row.study_uid, patient_id=row.patient_id, site_id=row.site_id,
        modalities=row.modalities, study_date=row.study_date,
        age_days=age_days(row.study_date, row.first_received_at, now),
        rule_id=row.rule_id, rule=names.get(row.rule_id, ""), instances=row.num_instances, bytes=row.size_bytes,
        action="keep" if reasons else "would_purge", reasons=reasons,
    )
