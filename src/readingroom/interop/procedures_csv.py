"""CSV import of canonical procedures and mappings, all or nothing per file.

Two formats, told apart by their header row (columns in any order, names
case-insensitive):

* procedures: ``code,name,modality,body_part,radlex,loinc``
* mappings:   ``scope,source,value,procedure_code``

One row per line (a quoted value cannot span lines); blank lines and lines
starting with ``#`` are ignored. Every row is checked
before anything is written; if one row is wrong (bad field, unknown
procedure or site, the same key twice in the file, a scope the caller may
not manage) the file is rejected whole with every bad row and its reason,
and nothing changes: a half-applied mapping file would classify some sites'
cases and not others, which is worse than none. A good file reports each
row as ``created``, ``updated`` (a different value for an existing key) or
``skipped`` (already exactly so). Import procedures first, then the mappings
that point at them. After mappings are applied, unclassified cases are
re-classified (bounded batch).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.interop.models import Procedure, ProcedureMapping
from readingroom.interop.procedure_mappings import MappingInput, clean_mapping, find_mapping, reapply
from readingroom.interop.procedures import (
    ProcedureConflict,
    ProcedureError,
    ProcedureInput,
    ScopeForbidden,
    Scopes,
)

PROCEDURE_COLUMNS = ("code", "name", "modality", "body_part", "radlex", "loinc")
MAPPING_COLUMNS = ("scope", "source", "value", "procedure_code")
MAX_ROWS = 50_000
CATALOGUE = "procedure_catalogue.csv"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RowResult:
    """One data row: its line number in the file, what happened (created / updated / skipped / error), why."""

    line: int
    key: str
    outcome: str
    reason: str = ""


@dataclass
class ImportReport:
    kind: str  # "procedures" or "mappings"
    rows: list[RowResult] = field(default_factory=list)
    applied: bool = False
    cases_classified: int = 0

    @property
    def counts(self) -> dict[str, int]:
        out = {"created": 0, "updated": 0, "skipped": 0, "error": 0}
        for row in self.rows:
            out[row.outcome] = out.get(row.outcome, 0) + 1
        return out

    @property
    def errors(self) -> list[RowResult]:
        return [r for r in self.rows if r.outcome == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "applied": self.applied, "counts": self.counts,
                "cases_classified": self.cases_classified,
                "rows": [{"line": r.line, "key": r.key, "outcome": r.outcome, "reason": r.reason}
                         for r in self.rows]}


class ImportRejected(ProcedureError):
    """The file was refused whole; ``report`` lists every bad row. ``forbidden``: a scope not the caller's."""

    def __init__(self, report: ImportReport, message: str = "", *, forbidden: bool = False) -> None:
        self.report = report
        self.forbidden = forbidden
        bad = report.errors
        detail = message or "; ".join(f"line {r.line}: {r.reason}" for r in bad[:20])
        if len(bad) > 20:
            detail += f"; and {len(bad) - 20} more"
        super().__init__(f"CSV rejected, nothing imported: {detail}")


def _rows(text: str) -> tuple[str, list[tuple[int, dict[str, str]]]]:
    """The file's kind and its data rows as (line number, {column: value}); ImportRejected if malformed."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    empty = ImportReport(kind="unknown")
    if not lines:
        raise ImportRejected(empty, "the file has no header row")
    header_line, header = lines[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    kinds = {"procedures": PROCEDURE_COLUMNS, "mappings": MAPPING_COLUMNS}
    kind = next((k for k, cols in kinds.items() if sorted(columns) == sorted(cols)), None)
    if kind is None:
        raise ImportRejected(empty, f"line {header_line}: header {','.join(columns)!r} is neither "
                                    f"{','.join(PROCEDURE_COLUMNS)} nor {','.join(MAPPING_COLUMNS)}")
    if len(lines) - 1 > MAX_ROWS:
        raise ImportRejected(ImportReport(kind=kind), f"{len(lines) - 1} rows; at most {MAX_ROWS} per file")
    out: list[tuple[int, dict[str, str]]] = []
    report = ImportReport(kind=kind)
    for n, line in lines[1:]:
        try:
            values = next(csv.reader([line]))
        except csv.Error as exc:
            report.rows.append(RowResult(n, line[:40], "error", f"not CSV: {exc}"))
            continue
        if len(values) != len(columns):
            report.rows.append(RowResult(n, line[:40], "error", f"{len(values)} fields, expected {len(columns)}"))
            continue
        out.append((n, {c: v.strip() for c, v in zip(columns, values, strict=True)}))
    if report.errors:
        raise ImportRejected(report)
    return kind, out


def _check_procedures(session: Session, rows: list[tuple[int, dict[str, str]]], allowed: Scopes,
                      progress: Progress | None) -> tuple[ImportReport, list[tuple[ProcedureInput, Procedure | None]]]:
    report = ImportReport(kind="procedures")
    if allowed is not None:
        raise ImportRejected(report, "only network administrators change the canonical procedures",
                             forbidden=True)
    existing = {p.code: p for p in session.scalars(select(Procedure))}
    seen: dict[str, int] = {}
    plan: list[tuple[ProcedureInput, Procedure | None]] = []
    for i, (line, row) in enumerate(rows, start=1):
        key = row["code"]
        try:
            p = ProcedureInput(code=row["code"], name=row["name"], modality=row["modality"],
                               body_part=row["body_part"], radlex_code=row["radlex"], loinc_code=row["loinc"]).cleaned()
        except ProcedureError as exc:
            report.rows.append(RowResult(line, key, "error", str(exc)))
            continue
        if p.code in seen:
            report.rows.append(RowResult(line, p.code, "error", f"code {p.code} is also on line {seen[p.code]}"))
            continue
        seen[p.code] = line
        current = existing.get(p.code)
        fields = ("name", "modality", "body_part", "radlex_code", "loinc_code")
        if current is None:
            report.rows.append(RowResult(line, p.code, "created"))
        elif all(getattr(current, f) == getattr(p, f) for f in fields):
            report.rows.append(RowResult(line, p.code, "skipped", "unchanged"))
        else:
            changed = [f for f in fields if getattr(current, f) != getattr(p, f)]
            report.rows.append(RowResult(line, p.code, "updated", "changed " + ", ".join(changed)))
        plan.append((p, current))
        if progress:
            progress(i, len(rows))
    return report, plan


def _check_mappings(session: Session, rows: list[tuple[int, dict[str, str]]], allowed: Scopes,
                    progress: Progress | None) -> tuple[ImportReport, list[tuple[Any, ...]], bool]:
    report = ImportReport(kind="mappings")
    seen: dict[tuple[str, str, str], int] = {}
    plan: list[tuple[Any, ...]] = []
    forbidden = False
    for i, (line, row) in enumerate(rows, start=1):
        key = f"{row['scope'] or '*'} {row['source'] or 'description'} {row['value']}"
        try:
            scope, source, value, procedure = clean_mapping(
                session, MappingInput(row["scope"], row["source"], row["value"], row["procedure_code"]), allowed)
        except ScopeForbidden as exc:
            forbidden = True
            report.rows.append(RowResult(line, key, "error", str(exc)))
            continue
        except ProcedureError as exc:
            report.rows.append(RowResult(line, key, "error", str(exc)))
            continue
        key = f"{scope} {source} {value}"
        if (scope, source, value) in seen:
            first = seen[scope, source, value]
            report.rows.append(RowResult(line, key, "error",
                                         f"the same mapping is on line {first} (values are compared normalised)"))
            continue
        seen[scope, source, value] = line
        current = find_mapping(session, scope, source, value)
        if current is None:
            report.rows.append(RowResult(line, key, "created", f"-> {procedure.code}"))
        elif current.procedure_id == procedure.id:
            report.rows.append(RowResult(line, key, "skipped", f"already -> {procedure.code}"))
        else:
            report.rows.append(RowResult(line, key, "updated", f"now -> {procedure.code}"))
        plan.append((scope, source, value, procedure, current))
        if progress:
            progress(i, len(rows))
    return report, plan, forbidden


def import_csv(session: Session, text: str, *, actor: str, allowed: Scopes = None,
               progress: Progress | None = None) -> ImportReport:
    """Check every row, then apply them all in ``session``; ImportRejected (nothing written) if any is bad."""
    kind, rows = _rows(text)
    now = utcnow()
    if kind == "procedures":
        report, plan = _check_procedures(session, rows, allowed, progress)
        if report.errors:
            raise ImportRejected(report)
        for p, current in plan:
            values = {"name": p.name, "modality": p.modality, "body_part": p.body_part,
                      "radlex_code": p.radlex_code, "loinc_code": p.loinc_code}
            if current is None:
                session.add(Procedure(code=p.code, created_at=now, **values))
            else:
                for key, value in values.items():
                    setattr(current, key, value)
    else:
        report, mplan, forbidden = _check_mappings(session, rows, allowed, progress)
        if report.errors:
            raise ImportRejected(report, forbidden=forbidden)
        for scope, source, value, procedure, current in mplan:
            if current is None:
                session.add(ProcedureMapping(scope=scope, source=source, value=value, procedure_id=procedure.id,
                                             created_at=now, created_by=actor[:128]))
            elif current.procedure_id != procedure.id:
                current.procedure_id = procedure.id
    try:
        session.flush()
    except IntegrityError as exc:  # another import or edit wrote the same key between our check and our write
        raise ProcedureConflict("another change to the same procedures or mappings happened meanwhile; nothing "
                                "was imported, send the file again") from exc
    report.applied = True
    if kind == "mappings" and (report.counts["created"] or report.counts["updated"]):
        report.cases_classified = reapply(session)
    audit.record(session, actor=actor, action=f"procedure_{kind}.imported", resource_type="procedure_import",
                 resource_id=kind, detail={**report.counts, "cases_classified": report.cases_classified})
    return report


def catalogue_text() -> str:
    """The starter catalogue shipped with ReadingRoom (procedures format)."""
    return resources.files("readingroom.interop").joinpath(CATALOGUE).read_text(encoding="utf-8")


def read_upload(data: bytes) -> str:
    """An uploaded file as text (UTF-8, a byte-order mark allowed); ImportRejected if it is not text."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected(ImportReport(kind="unknown"), f"the file is not UTF-8 text ({exc.reason} at byte "
                                                            f"{exc.start})") from exc


__all__ = ["MAPPING_COLUMNS", "MAX_ROWS", "PROCEDURE_COLUMNS", "ImportRejected", "ImportReport", "RowResult",
           "catalogue_text", "import_csv", "read_upload"]
