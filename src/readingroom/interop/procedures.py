"""Canonical procedures: one name for the exam every site calls differently.

Site A sends ``CT HEAD W/O``, site B ``Head CT non-contrast``, a RIS the code
``CTHD``: routing rules and analytics need one answer, ``CT-HEAD-WO``. The
mapping table says, per site (``scope`` = the site's code) or for every site
(``*``), which study description or procedure code means which canonical
procedure; :func:`resolve` picks the most specific mapping, and case
creation stores the answer in ``cases.procedure_code`` (through the resolver
hook of :mod:`readingroom.workflow.cases`, so workflow never imports interop).

Values are compared after :func:`normalise`, so spelling noise (case,
spacing, punctuation) does not need one mapping per variant, while the
characters that change the meaning of an exam name (``W/O`` against ``W``,
``C+`` against ``C-``) are kept. Every change is audited; a new mapping is
re-applied at once to the cases that were waiting for it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.interop import orders
from readingroom.interop.models import Order, Procedure, ProcedureMapping
from readingroom.workflow import cases as workflow_cases
from readingroom.workflow.models import Case
from readingroom.workflow.states import OPEN_STATES

ALL_SITES = "*"
DESCRIPTION = "description"
CODE = "code"
SOURCES = (CODE, DESCRIPTION)
#: Cases examined per re-application (the newest first); the rest wait for the next mapping or ``reapply``.
REAPPLY_BATCH = 5000
CODE_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9_.:\-]{0,63}$")
MODALITY_PATTERN = re.compile(r"^[A-Z0-9]{0,16}$")
RADLEX_PATTERN = re.compile(r"^RPID[1-9][0-9]{0,7}$")
LOINC_PATTERN = re.compile(r"^[0-9]{1,7}-[0-9]$")

#: A set of site codes the caller may manage; None = every site and the network-wide scope ``*``.
Scopes = frozenset[str] | None


class ProcedureError(ValueError):
    """Refused input; the message is the readable reason (HTTP 422 / CLI error)."""


class ProcedureNotFound(ProcedureError, LookupError):
    """No such procedure or mapping (HTTP 404)."""


class ProcedureConflict(ProcedureError):
    """The code or the (scope, source, value) mapping exists already (HTTP 409)."""


class ScopeForbidden(ProcedureError):
    """The caller may not manage this scope: another site's, or the network-wide ``*`` (HTTP 403)."""


# -- normalisation and resolution -----------------------------------------------------------------------------

_NOISE = re.compile(r"[^\w+\-/&]|_", re.UNICODE)
_INNER_HYPHEN = re.compile(r"(?<=[^\W_])-(?=[^\W_])")
_SPACED_SLASH = re.compile(r"\s*/\s*")
_SPACES = re.compile(r"\s+")


def normalise(value: str) -> str:
    """The form descriptions and codes are stored and compared in.

    Unicode compatibility form (NFKC), upper case; every character other than
    a letter, a digit or one of ``+ - / &`` becomes a space (``.,;:()[]_'"*``
    are noise); a hyphen between two letters or digits is a space too
    (``CT-HEAD`` = ``CT HEAD``), while a trailing one stays (``C-`` is not
    ``C``); spaces around ``/`` go (``W / O`` = ``W/O``); runs of spaces
    become one and the ends are trimmed. ``"  ct head, w/o (contrast) "``
    becomes ``"CT HEAD W/O CONTRAST"``.
    """
    text = unicodedata.normalize("NFKC", value or "").upper()
    text = _NOISE.sub(" ", text)
    text = _INNER_HYPHEN.sub(" ", text)
    text = _SPACED_SLASH.sub("/", text)
    return _SPACES.sub(" ", text).strip()[:255]


def resolve(session: Session, site_code: str, code: str, description: str) -> Procedure | None:
    """The canonical procedure for a site's procedure code and/or description, or None (unmapped).

    Most specific first: the site's mapping of the code, the site's mapping of
    the description, then the network-wide (``*``) code, then description.
    A code outranks a description because a code is what the RIS means
    exactly, while descriptions are typed and drift.
    """
    code_n, desc_n = normalise(code), normalise(description)
    wanted = []
    if code_n:
        wanted.append((ProcedureMapping.source == CODE) & (ProcedureMapping.value == code_n))
    if desc_n:
        wanted.append((ProcedureMapping.source == DESCRIPTION) & (ProcedureMapping.value == desc_n))
    if not wanted:
        return None
    scopes = [ALL_SITES, site_code] if site_code else [ALL_SITES]
    rows = session.execute(select(ProcedureMapping.scope, ProcedureMapping.source, Procedure)
                           .join(Procedure, Procedure.id == ProcedureMapping.procedure_id)
                           .where(ProcedureMapping.scope.in_(scopes), or_(*wanted))).all()
    if not rows:
        return None

    def rank(row: Any) -> tuple[int, int]:
        return (0 if row.scope != ALL_SITES else 1, 0 if row.source == CODE else 1)

    return min(rows, key=rank).Procedure


def site_code_of(session: Session, site_id: int | None) -> str:
    if site_id is None:
        return ""
    return session.scalar(select(Site.code).where(Site.id == site_id)) or ""


def resolve_code(session: Session, site_id: int | None, code: str, description: str) -> str:
    """The canonical code for a case being created ("" when unmapped): the workflow resolver hook."""
    found = resolve(session, site_code_of(session, site_id), code, description)
    return found.code if found is not None else ""


def classify_order(session: Session, order: Order) -> None:
    """Order hook: record the order's canonical procedure and give it to the order's open case.

    ``Order.procedure_code`` / ``procedure_text`` stay what the RIS sent
    (FHIR and HL7 answers echo them); the canonical code goes to
    ``order.attrs["canonical_procedure"]`` and ``cases.procedure_code``. A
    changed order (new procedure) re-classifies its open case.
    """
    found = resolve(session, site_code_of(session, order.site_id), order.procedure_code, order.procedure_text)
    canonical = found.code if found is not None else ""
    if (order.attrs or {}).get("canonical_procedure", None) != canonical:
        order.attrs = {**(order.attrs or {}), "canonical_procedure": canonical}
    if order.case_id is not None and canonical:
        session.execute(update(Case).where(Case.id == order.case_id, Case.procedure_code != canonical,
                                           Case.state.in_([s.value for s in OPEN_STATES]))
                        .values(procedure_code=canonical).execution_options(synchronize_session=False))


workflow_cases.set_procedure_resolver(resolve_code)
orders.on_order_placed(classify_order)


# -- procedures -----------------------------------------------------------------------------------------------


@dataclass
class ProcedureInput:
    """A canonical procedure as an admin, the API or a CSV row gives it."""

    code: str
    name: str
    modality: str = ""
    body_part: str = ""
    radlex_code: str = ""
    loinc_code: str = ""

    def cleaned(self) -> ProcedureInput:
        """Normalised and validated; ProcedureError says which field is wrong and why."""
        out = ProcedureInput(code=self.code.strip().upper(), name=" ".join(self.name.split()),
                             modality=self.modality.strip().upper(), body_part=self.body_part.strip().upper(),
                             radlex_code=self.radlex_code.strip().upper(), loinc_code=self.loinc_code.strip())
        if not CODE_PATTERN.match(out.code):
            raise ProcedureError(f"code {self.code!r}: 1-64 letters, digits or _ . : - (starting with a letter "
                                 "or digit)")
        if not out.name or len(out.name) > 255:
            raise ProcedureError("name: 1-255 characters")
        if not MODALITY_PATTERN.match(out.modality):
            raise ProcedureError(f"modality {self.modality!r}: a DICOM modality code such as CT, MR, DX, US")
        if len(out.body_part) > 64:
            raise ProcedureError("body_part: at most 64 characters")
        if out.radlex_code and not RADLEX_PATTERN.match(out.radlex_code):
            raise ProcedureError(f"radlex {self.radlex_code!r}: a RadLex Playbook id such as RPID22")
        if out.loinc_code and not (LOINC_PATTERN.match(out.loinc_code) and loinc_check_ok(out.loinc_code)):
            raise ProcedureError(f"loinc {self.loinc_code!r}: not a LOINC code (digits, '-', check digit)")
        return out


def loinc_check_ok(code: str) -> bool:
    """Whether a LOINC code's check digit (after the hyphen) is right: LOINC uses the Luhn mod-10 digit."""
    body, check = code.split("-")
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return (10 - total % 10) % 10 == int(check)


def get_procedure(session: Session, code: str) -> Procedure:
    found = session.scalar(select(Procedure).where(Procedure.code == code.strip().upper()))
    if found is None:
        raise ProcedureNotFound(f"no canonical procedure {code!r}")
    return found


def list_procedures(session: Session, *, q: str = "", modality: str = "", limit: int = 1000) -> list[Procedure]:
    """Procedures by code; ``q`` searches code and name (case-insensitive), ``modality`` filters."""
    query = select(Procedure)
    if q:
        like = f"%{q.strip().lower()}%"
        query = query.where(or_(func.lower(Procedure.code).like(like), func.lower(Procedure.name).like(like)))
    if modality:
        query = query.where(Procedure.modality == modality.strip().upper())
    return list(session.scalars(query.order_by(Procedure.code).limit(limit)))


def _procedure_fields(p: ProcedureInput) -> dict[str, str]:
    return {"name": p.name, "modality": p.modality, "body_part": p.body_part, "radlex_code": p.radlex_code,
            "loinc_code": p.loinc_code}


def create_procedure(session: Session, data: ProcedureInput, *, actor: str) -> Procedure:
    """A new canonical procedure; ProcedureConflict if the code exists."""
    p = data.cleaned()
    if session.scalar(select(Procedure.id).where(Procedure.code == p.code)) is not None:
        raise ProcedureConflict(f"procedure {p.code} exists; change it with PUT")
    row = Procedure(code=p.code, created_at=utcnow(), **_procedure_fields(p))
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:  # another writer created the same code meanwhile
        raise ProcedureConflict(f"procedure {p.code} exists; change it with PUT") from exc
    audit.record(session, actor=actor, action="procedure.created", resource_type="procedure", resource_id=p.code,
                 detail=_procedure_fields(p))
    return row


def update_procedure(session: Session, code: str, data: ProcedureInput, *, actor: str) -> Procedure:
    """Change a procedure's name, modality, body part or codes (its code is its identity)."""
    row = get_procedure(session, code)
    p = ProcedureInput(**{**data.__dict__, "code": row.code}).cleaned()
    before = {k: getattr(row, k) for k in _procedure_fields(p)}
    for key, value in _procedure_fields(p).items():
        setattr(row, key, value)
    session.flush()
    audit.record(session, actor=actor, action="procedure.changed", resource_type="procedure", resource_id=row.code,
                 detail={"before": before, "after": _procedure_fields(p)})
    return row


def delete_procedure(session: Session, code: str, *, actor: str) -> int:
    """Remove a procedure and its mappings; returns how many mappings went with it.

    Cases keep the code they were given (their history and the analytics of
    the past do not change); new cases of those descriptions are unmapped
    again until someone maps them.
    """
    row = get_procedure(session, code)
    gone = session.execute(delete(ProcedureMapping).where(ProcedureMapping.procedure_id == row.id)).rowcount
    session.delete(row)
    session.flush()
    audit.record(session, actor=actor, action="procedure.deleted", resource_type="procedure", resource_id=row.code,
                 detail={"mappings_deleted": gone})
    return gone
