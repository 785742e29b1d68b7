"""Reading reports: a version as a whole document, the history, the diff between two versions.

A version's document is its sections plus every addendum signed up to it,
so version 7 of a report reads exactly as it did when version 7 was
written. People who write reports see drafts; everyone else who may see the
case sees signed versions only (a clinician never reads an unsigned draft).
The outputs (HTML, PDF, FHIR, HL7) are built from :class:`ReportDocument`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.collab import report_templates as templates
from readingroom.collab.reports import SIGNED_KINDS, ReportLocked, ReportNotFound
from readingroom.collab.reports_models import Report, ReportVersion
from readingroom.governance.models import Site
from readingroom.workflow.models import Case


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Addendum:
    number: int
    text: str
    signer: str
    signed_at: datetime


@dataclass
class ReportDocument:
    """One version of a case's report with what a reader of it needs (patient, study, signer)."""

    case_id: int
    report_id: int
    number: int
    kind: str  # draft | preliminary | final | addendum
    template_id: str
    template_title: str
    sections: list[Section]
    addenda: list[Addendum]
    author: str
    created_at: datetime
    signer: str
    signed_by: str
    final_signed_at: datetime | None
    accession_number: str = ""
    modality: str = ""
    body_part: str = ""
    description: str = ""
    patient_class: str = ""
    ordering_physician: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    patient_id: str = ""
    patient_issuer: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    site_code: str = ""
    site_name: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def impression(self) -> str:
        return next((s.text for s in self.sections if s.id == "impression"), "")

    def plain_text(self) -> str:
        """The report as plain text (sections in template order, then addenda)."""
        parts = [f"{s.title.upper()}:\n{s.text}" for s in self.sections if s.text.strip()]
        parts += [f"ADDENDUM ({a.signer}, {a.signed_at:%Y-%m-%d %H:%M} UTC):\n{a.text}" for a in self.addenda]
        return "\n\n".join(parts)


def versions(session: Session, case_id: int, *, signed_only: bool) -> list[ReportVersion]:
    """The report's versions, oldest first (signed ones only for readers who do not write reports)."""
    q = select(ReportVersion).join(Report, Report.id == ReportVersion.report_id).where(Report.case_id == case_id)
    if signed_only:
        q = q.where(ReportVersion.kind.in_(SIGNED_KINDS))
    return list(session.scalars(q.order_by(ReportVersion.number)))


def version(session: Session, case_id: int, number: int | None, *, signed_only: bool) -> ReportVersion:
    """One version (None: the latest one the reader may see); ReportNotFound / ReportLocked if none."""
    q = select(ReportVersion).join(Report, Report.id == ReportVersion.report_id).where(Report.case_id == case_id)
    if signed_only:
        q = q.where(ReportVersion.kind.in_(SIGNED_KINDS))
    if number is not None:
        row = session.scalars(q.where(ReportVersion.number == number)).first()
        if row is None:
            raise ReportNotFound(f"case {case_id}'s report has no version {number}"
                                 + (" you may read (drafts are for report writers)" if signed_only else ""))
        return row
    row = session.scalars(q.order_by(ReportVersion.number.desc()).limit(1)).first()
    if row is None:
        raise ReportLocked(f"case {case_id} has no {'signed ' if signed_only else ''}report yet")
    return row


def _addenda(session: Session, report_id: int, up_to: int) -> list[Addendum]:
    rows = session.scalars(select(ReportVersion).where(
        ReportVersion.report_id == report_id, ReportVersion.kind == "addendum", ReportVersion.number <= up_to,
    ).order_by(ReportVersion.number))
    return [Addendum(r.number, r.addendum, r.signer_name or r.signed_by, r.created_at) for r in rows]


def sections_of(row: ReportVersion) -> list[Section]:
    """The version's sections in its template's order, with their titles."""
    try:
        template = templates.get_template(row.template_id)
        specs = [(s.id, s.title) for s in template.sections]
    except templates.TemplateError:  # a template withdrawn since: keep the stored order
        specs = [(key, key.replace("_", " ").capitalize()) for key in row.sections]
    return [Section(sid, title, str(row.sections.get(sid, ""))) for sid, title in specs]


def document(session: Session, case_id: int, number: int | None = None, *, signed_only: bool = True) -> ReportDocument:
    """The report at one version (default: the latest the reader may see) with its case's context."""
    row = version(session, case_id, number, signed_only=signed_only)
    report = session.get(Report, row.report_id)
    assert report is not None
    final_at = None
    if report.final_version is not None and report.final_version <= row.number:
        final_at = session.scalar(select(ReportVersion.created_at).where(
            ReportVersion.report_id == report.id, ReportVersion.number == report.final_version))
    try:
        title = templates.get_template(row.template_id).title
    except templates.TemplateError:
        title = "Imaging report"
    signer_row = row if row.kind in SIGNED_KINDS else None
    doc = ReportDocument(
        case_id=case_id, report_id=report.id, number=row.number, kind=row.kind, template_id=row.template_id,
        template_title=title, sections=sections_of(row), addenda=_addenda(session, report.id, row.number),
        author=row.author, created_at=row.created_at, signer=signer_row.signer_name if signer_row else "",
        signed_by=signer_row.signed_by if signer_row else "", final_signed_at=final_at)
    _add_context(session, case_id, doc)
    return doc


def _add_context(session: Session, case_id: int, doc: ReportDocument) -> None:
    case = session.get(Case, case_id)
    if case is None:
        raise ReportNotFound(f"no case {case_id}")
    doc.accession_number, doc.modality, doc.body_part = case.accession_number, case.modality, case.body_part
    doc.description, doc.patient_class = case.description, case.patient_class
    doc.ordering_physician = case.ordering_physician
    if case.study_pk is not None:
        study = session.get(Study, case.study_pk)
        if study is not None:
            doc.study_uid, doc.study_date, doc.study_time = study.study_uid, study.study_date, study.study_time
            doc.ordering_physician = doc.ordering_physician or study.referring_physician
    if case.patient_pk is not None:
        patient = session.get(Patient, case.patient_pk)
        if patient is not None:
            doc.patient_id, doc.patient_issuer, doc.patient_name = patient.patient_id, patient.issuer, patient.name
            doc.birth_date, doc.sex = patient.birth_date, patient.sex
    if case.site_id is not None:
        site = session.get(Site, case.site_id)
        if site is not None:
            doc.site_code, doc.site_name = site.code, site.name
            doc.patient_issuer = doc.patient_issuer or site.issuer_of_patient_id


@dataclass(frozen=True)
class SectionDiff:
    id: str
    title: str
    changed: bool
    lines: list[str]


def diff(session: Session, case_id: int, old: int | None, new: int | None, *,
         signed_only: bool) -> tuple[int, int, list[SectionDiff]]:
    """Per-section unified diff (difflib) from version ``old`` to ``new`` (default: the last two visible)."""
    rows = versions(session, case_id, signed_only=signed_only)
    if new is None:
        if not rows:
            raise ReportLocked(f"case {case_id} has no {'signed ' if signed_only else ''}report to compare")
        new = rows[-1].number
    if old is None:
        earlier = [r.number for r in rows if r.number < new]
        if not earlier:
            raise ReportLocked(f"version {new} is the first: there is nothing before it to compare with")
        old = earlier[-1]
    a = document(session, case_id, old, signed_only=signed_only)
    b = document(session, case_id, new, signed_only=signed_only)
    out: list[SectionDiff] = []
    titles = {s.id: s.title for s in a.sections} | {s.id: s.title for s in b.sections}
    texts_a, texts_b = {s.id: s.text for s in a.sections}, {s.id: s.text for s in b.sections}
    for sid in [*texts_b, *(k for k in texts_a if k not in texts_b)]:
        out.append(_section_diff(sid, titles[sid], texts_a.get(sid, ""), texts_b.get(sid, ""), old, new))
    out.append(_section_diff("addenda", "Addenda", "\n\n".join(x.text for x in a.addenda),
                             "\n\n".join(x.text for x in b.addenda), old, new))
    return old, new, out


def _section_diff(sid: str, title: str, before: str, after: str, old: int, new: int) -> SectionDiff:
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"v{old}/{sid}", f"v{new}/{sid}",
                                      lineterm=""))
    return SectionDiff(sid, title, before != after, lines)
