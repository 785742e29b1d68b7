"""What the referring partner sees: every status of a referral, derived from the logs, and the report.

Nothing here is stored twice: the referral's own events give received,
accepted or declined (and an SLA breach, for the receiving site), the
accepted case's event log gives images available, in reading, preliminary
and final (reported), and the report is the latest signed version written by
the reports module. If that module is not installed the case events alone
say when the case was reported, and the partner gets the link without text.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.collab.referrals_models import Referral, ReferralEvent
from readingroom.workflow.models import CaseEvent

#: Case event kind -> the partner's status (the first event of each status counts).
CASE_STATUS: dict[str, str] = {
    "images_arrived": "images_available",
    "received": "images_available",  # a case created from images that came before the acceptance
    "claimed": "in_reading",
    "reassigned": "in_reading",
    "preliminary": "preliminary",
    "report.preliminary": "preliminary",
    "completed": "reported",
    "report.final": "reported",
    "addended": "addended",
    "report.addended": "addended",
    "cancelled": "cancelled",
}
#: Referral event kind -> status shown to the partner (an SLA breach is the receiving site's business).
REFERRAL_STATUS = {"received": "received", "accepted": "accepted", "declined": "declined"}
SIGNED_KINDS = ("preliminary", "final", "addendum")


@dataclass(frozen=True)
class Step:
    status: str
    at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True)
class SignedReportView:
    """The latest signed report of a case, as the partner receives it."""

    link: str
    kind: str  # preliminary | final | addendum
    version: int | None
    signed_at: datetime
    signed_by: str
    text: str


def timeline(session: Session, referral: Referral) -> list[Step]:
    """The partner-visible steps, oldest first (each status once, at its first occurrence)."""
    steps: list[Step] = []
    seen: set[str] = set()
    for kind, at, data in session.execute(select(ReferralEvent.kind, ReferralEvent.at, ReferralEvent.data)
                                          .where(ReferralEvent.referral_id == referral.id)
                                          .order_by(ReferralEvent.id)).all():
        status = REFERRAL_STATUS.get(kind)
        if status and status not in seen:
            seen.add(status)
            steps.append(Step(status, at, {"reason": data.get("reason")} if status == "declined" else {}))
    if referral.case_id is not None:
        accepted_at = referral.decided_at
        for kind, at in session.execute(select(CaseEvent.kind, CaseEvent.at).where(
                CaseEvent.case_id == referral.case_id).order_by(CaseEvent.id)).all():
            status = CASE_STATUS.get(kind)
            if status is None or status in seen:
                continue
            seen.add(status)
            # images that arrived before the acceptance are available from the acceptance on, for the partner
            steps.append(Step(status, max(at, accepted_at) if accepted_at else at, {}))
    return sorted(steps, key=lambda s: s.at)


def current_status(steps: list[Step]) -> str:
    return steps[-1].status if steps else "received"


def report_link(case_id: int) -> str:
    return f"/api/v1/cases/{case_id}/report"


def signed_report(session: Session, case_id: int) -> SignedReportView | None:
    """The latest signed version (text included) if the reports module is present, else from the case events."""
    try:
        models = importlib.import_module("readingroom.collab.reports_models")
    except ImportError:
        models = None
    if models is not None and hasattr(models, "ReportVersion") and hasattr(models, "Report"):
        report_cls, version_cls = models.Report, models.ReportVersion
        row = session.execute(
            select(version_cls).join(report_cls, report_cls.id == version_cls.report_id)
            .where(report_cls.case_id == case_id, version_cls.kind.in_(SIGNED_KINDS))
            .order_by(version_cls.number.desc()).limit(1)).scalar()
        if row is not None:
            return SignedReportView(link=report_link(case_id), kind=row.kind, version=row.number,
                                    signed_at=row.created_at, signed_by=row.signer_name or row.signed_by,
                                    text=_text_of(session, version_cls, row))
    event = session.execute(select(CaseEvent.kind, CaseEvent.at, CaseEvent.actor).where(
        CaseEvent.case_id == case_id, CaseEvent.kind.in_(("preliminary", "completed", "addended")))
        .order_by(CaseEvent.id.desc()).limit(1)).first()
    if event is None:
        return None
    kind = {"completed": "final", "addended": "addendum"}.get(event.kind, event.kind)
    return SignedReportView(link=report_link(case_id), kind=kind, version=None, signed_at=event.at,
                            signed_by=event.actor, text="")


def _text_of(session: Session, version_cls: Any, row: Any) -> str:
    """Plain text of a signed version: its sections, then (for an addendum) every addendum so far."""
    parts = [f"{name.replace('_', ' ').upper()}:\n{text}".rstrip() for name, text in (row.sections or {}).items()
             if str(text).strip()]
    if row.kind == "addendum":
        addenda = session.scalars(select(version_cls.addendum).where(
            version_cls.report_id == row.report_id, version_cls.kind == "addendum",
            version_cls.number <= row.number).order_by(version_cls.number)).all()
        parts += [f"ADDENDUM:\n{text}" for text in addenda if text]
    return "\n\n".join(parts)
