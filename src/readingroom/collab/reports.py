"""Writing reports: drafts, signatures (preliminary, final), addenda — with no lost write.

Every write names the version it was based on (the ETag the client read,
sent back as ``If-Match``) and is one conditional
``UPDATE reports … WHERE id = :id AND version = :expected AND status IN (…)``:
of two editors holding the same ETag exactly one matches a row; the other
gets :class:`StaleReport` carrying the newer version so the client can merge
(HTTP 412). The decision is the database's, never a Python read-then-write,
so it holds across threads and processes on PostgreSQL as on SQLite.

Each accepted write appends one ``report_versions`` row (history and diff)
and, when it changes the report's status, one case event in the same
transaction (principle 1): ``report.drafted``, ``report.preliminary``,
``report.final`` (which completes the read: case state ``final``) and
``report.addended``. A final is immutable: nothing can change its sections
again; an addendum is a new, signed version that keeps the final intact.

Hooks registered with :func:`on_signed` run inside the signing transaction,
which is where the interoperability outbox belongs (write the outbound ORU
row there and it is sent if and only if the signature committed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.clock import utcnow
from readingroom.collab import report_templates as templates
from readingroom.collab.reports_models import Report, ReportVersion
from readingroom.governance import audit
from readingroom.governance.models import User
from readingroom.workflow.cases import Actor, touch, transition
from readingroom.workflow.models import Case
from readingroom.workflow.states import CaseState

EDITABLE = ("draft", "preliminary")
SIGNED_KINDS = ("preliminary", "final", "addendum")
#: HL7 v2 OBR-25 / OBX-11 result status of each signed version kind (addendum: corrected).
RESULT_STATUS = {"preliminary": "P", "final": "F", "addendum": "C"}
MAX_ADDENDUM_CHARS = 20_000


class ReportError(Exception):
    """Base of the report errors (each maps to one HTTP status in reports_api)."""


class ReportNotFound(ReportError, LookupError):
    """No such report or version (404)."""


class ReportLocked(ReportError):
    """Not possible in the report's or case's state: a final cannot change, nothing to sign yet (409)."""


class NotReportReader(ReportError, PermissionError):
    """The actor is not the case's reader (claimer or assignee) (403)."""


class StaleReport(ReportError):
    """The write was based on an older version (412); carries the newer one, to merge with.

    A snapshot (not the ORM row), because the transaction that saw it is
    rolled back before anyone reads the exception.
    """

    def __init__(self, case_id: int, current: Report | None) -> None:
        self.case_id = case_id
        self.version = current.version if current is not None else 0
        self.status = current.status if current is not None else "none"
        self.sections: dict[str, Any] = dict(current.sections) if current is not None else {}
        super().__init__(f"the report changed meanwhile (now version {self.version}): merge with it and retry "
                         f"with If-Match: {etag(case_id, self.version)}")


def etag(case_id: int, version: int) -> str:
    """The strong entity tag of one version of a case's report (version 0: no report yet)."""
    return f'"report-{case_id}-v{version}"'


def parse_if_match(header: str, case_id: int) -> int | None:
    """The version an ``If-Match`` value names (None: it names none of this report's versions).

    ``*`` is refused on purpose by the caller: a blind overwrite is what
    optimistic concurrency exists to prevent. A list names several versions;
    the first one of this report counts.
    """
    prefix = f'"report-{case_id}-v'
    for item in (v.strip() for v in header.split(",")):
        if item.startswith(prefix) and item.endswith('"') and item[len(prefix):-1].isdigit():
            return int(item[len(prefix):-1])
    return None


# -- hooks for the outbound interfaces ------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedReport:
    """What an outbound interface needs to know about a signature (the report is built from it on demand)."""

    case_id: int
    report_id: int
    version: int
    kind: str  # preliminary | final | addendum
    result_status: str  # HL7 P | F | C


SignedHook = Callable[[Session, SignedReport], None]
_signed_hooks: list[SignedHook] = []


def on_signed(hook: SignedHook) -> SignedHook:
    """Register ``hook(session, signed)``, called inside the transaction of every signature.

    For the interoperability outbox: build the ORU^R01 with
    ``report_hl7.build_oru(session, signed.case_id, signed.version)`` and
    insert the outbox row in ``session``. An exception aborts the signature,
    so a report is never signed without its outbound message queued.
    """
    _signed_hooks.append(hook)
    return hook


def remove_signed_hook(hook: SignedHook) -> None:
    if hook in _signed_hooks:
        _signed_hooks.remove(hook)


# -- reading the current state (for writes) -------------------------------------------------------------------


def report_of(session: Session, case_id: int) -> Report | None:
    """The case's report as committed now (bypasses the session's cache: used after a failed UPDATE)."""
    return session.execute(select(Report).where(Report.case_id == case_id)
                           .execution_options(populate_existing=True)).scalar()


def has_unsigned_report(session: Session, case_id: int) -> bool:
    """Whether the case has a report that is not final yet (then only signing the final completes the case)."""
    return session.execute(select(Report.id).where(Report.case_id == case_id,
                                                   Report.status.in_(EDITABLE))).first() is not None


def require_reader(case: Case, actor: Actor) -> None:
    if actor.user_id is None or actor.user_id not in (case.claimed_by, case.assignee):
        raise NotReportReader("only the reader who claimed (or was assigned) the case writes and signs its report")
    if case.state not in (CaseState.CLAIMED.value, CaseState.PRELIMINARY.value):
        raise ReportLocked(f"the case is {case.state}: a report is written while the case is claimed")


def _signer_name(session: Session, actor: Actor) -> str:
    full = session.execute(select(User.full_name).where(User.id == actor.user_id)).scalar() if actor.user_id else ""
    return full or actor.name


def _conditional_update(session: Session, report: Report, expected: int, allowed: tuple[str, ...],
                        values: dict[str, Any]) -> Report:
    """Apply ``values`` if the report is still at ``expected`` in an allowed status; else the right error."""
    result = session.execute(
        update(Report).where(Report.id == report.id, Report.version == expected, Report.status.in_(allowed))
        .values(version=Report.version + 1, **values).execution_options(synchronize_session=False))
    now = report_of(session, report.case_id)
    assert now is not None
    if result.rowcount == 1:
        return now
    if now.status not in allowed:
        raise ReportLocked(_locked_reason(now))
    raise StaleReport(report.case_id, now)


def _locked_reason(report: Report) -> str:
    if report.status in ("final", "addended"):
        return f"the report is {report.status}: a final report cannot change; write an addendum"
    return f"the report is {report.status}: sign a final report before adding an addendum"


def _add_version(session: Session, report: Report, kind: str, actor: Actor, *, addendum: str = "",
                 signer: str = "") -> ReportVersion:
    row = ReportVersion(report_id=report.id, number=report.version, kind=kind, template_id=report.template_id,
                        sections=dict(report.sections), addendum=addendum, author=actor.name,
                        author_id=actor.user_id, created_at=report.updated_at,
                        signed_by=actor.name if signer else "", signer_name=signer)
    session.add(row)
    session.flush()
    return row


# -- writes ---------------------------------------------------------------------------------------------------


def save_draft(session: Session, case: Case, actor: Actor, expected: int, sections: dict[str, str],
               template_id: str | None = None) -> Report:
    """Store the whole sections document as the next draft version (autosave).

    ``expected`` is the version the editor started from (0 for a case
    without a report). Editing a preliminary report makes a new draft; the
    preliminary stays in the history and in the outputs until the next
    signature.
    """
    require_reader(case, actor)
    report = report_of(session, case.id)
    if report is not None and report.status not in EDITABLE:
        raise ReportLocked(_locked_reason(report))
    if (report.version if report is not None else 0) != expected:
        raise StaleReport(case.id, report)
    template = templates.get_template(template_id) if template_id else (
        templates.get_template(report.template_id) if report is not None and report.template_id
        else templates.best_template(case.modality, case.body_part))
    document = templates.conform(template, sections)
    now = utcnow()
    if report is None:
        report_id = session.execute(insert_for(session, Report).values(
            case_id=case.id, template_id=template.id, status="draft", version=1, sections=document,
            created_at=now, created_by=actor.name, updated_at=now, updated_by=actor.name,
        ).on_conflict_do_nothing().returning(Report.id)).scalar()
        if report_id is None:  # another editor created it first
            raise StaleReport(case.id, report_of(session, case.id))
        report = report_of(session, case.id)
        assert report is not None
        previous = "none"
    else:
        previous = report.status
        report = _conditional_update(session, report, expected, EDITABLE, dict(
            status="draft", sections=document, template_id=template.id, updated_at=now, updated_by=actor.name))
    _add_version(session, report, "draft", actor)
    if previous != "draft":
        transition(session, case.id, "report.drafted", actor, data={"report_version": report.version,
                                                                    "after": previous})
    else:
        audit.record(session, actor=actor.name, action="report.saved", resource_type="case",
                     resource_id=str(case.id), detail={"report_version": report.version})
    if actor.user_id is not None:
        touch(session, case.id, actor.user_id)
    return report


def sign(session: Session, case: Case, actor: Actor, expected: int, kind: str) -> tuple[Report, SignedReport]:
    """Sign the current text as ``preliminary`` or ``final`` (the final completes the case's read)."""
    if kind not in ("preliminary", "final"):
        raise templates.TemplateError(f"sign as 'preliminary' or 'final', not {kind!r}")
    require_reader(case, actor)
    report = report_of(session, case.id)
    if report is None:
        raise ReportLocked("there is no report to sign yet: save a draft first")
    if report.status not in EDITABLE:
        raise ReportLocked(_locked_reason(report))
    if report.version != expected:
        raise StaleReport(case.id, report)
    missing = templates.missing_required(templates.get_template(report.template_id), report.sections)
    if missing:
        raise templates.TemplateError(f"required section(s) empty: {', '.join(missing)}")
    now = utcnow()
    values: dict[str, Any] = dict(status=kind, updated_at=now, updated_by=actor.name)
    if kind == "final":
        values["final_version"] = expected + 1
    report = _conditional_update(session, report, expected, EDITABLE, values)
    _add_version(session, report, kind, actor, signer=_signer_name(session, actor))
    uid = actor.user_id
    transition(session, case.id, f"report.{kind}", actor, data={"report_version": report.version},
               extra_where=or_(Case.claimed_by == uid, Case.assignee == uid))
    return report, _signed(session, report, kind)


def add_addendum(session: Session, case: Case, actor: Actor, expected: int, text: str) -> tuple[Report, SignedReport]:
    """Append a signed addendum to a final report; the final's text stays exactly as signed."""
    text = text.strip()
    if not text:
        raise templates.TemplateError("an addendum needs text")
    if len(text) > MAX_ADDENDUM_CHARS:
        raise templates.TemplateError(f"an addendum is at most {MAX_ADDENDUM_CHARS} characters")
    if actor.user_id is None:
        raise NotReportReader("an addendum is signed by a person")
    report = report_of(session, case.id)
    if report is None or report.status in EDITABLE:
        raise ReportLocked("an addendum is added to a final report; this case has none yet")
    if report.version != expected:
        raise StaleReport(case.id, report)
    report = _conditional_update(session, report, expected, ("final", "addended"), dict(
        status="addended", updated_at=utcnow(), updated_by=actor.name))
    _add_version(session, report, "addendum", actor, addendum=text, signer=_signer_name(session, actor))
    transition(session, case.id, "report.addended", actor, data={"report_version": report.version})
    return report, _signed(session, report, "addendum")


def _signed(session: Session, report: Report, kind: str) -> SignedReport:
    signed = SignedReport(report.case_id, report.id, report.version, kind, RESULT_STATUS[kind])
    for hook in list(_signed_hooks):
        hook(session, signed)
    return signed
