"""Built-in quality checks when a study meets its case.

* Protocol mismatch: the study received is not the procedure ordered
  (modality, body part, contrast) — the wrong patient or the wrong protocol
  is a patient-safety issue, so it is flagged and queued, never silently read.
* Incomplete study: fewer series or instances than the order's protocol
  expects (``expected_series`` / ``expected_instances`` order fields, as a
  RIS or the modality worklist knows them), e.g. a reconstruction still to come.

Each problem becomes a case flag (which routing rules can match) and an
exception queue item with the reason.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import Series, Study
from readingroom.workflow import exceptions
from readingroom.workflow.cases import transition
from readingroom.workflow.models import Case

PROTOCOL_MISMATCH = "PROTOCOL_MISMATCH"
INCOMPLETE_STUDY = "INCOMPLETE_STUDY"
_WITH_CONTRAST = re.compile(r"\b(W/?(?!O)|WITH|POST|\+)\s*(IV\s*)?(CONTRAST|CON|C)\b|\bCE\b|\bW/WO\b", re.I)
_TRUE = {"1", "true", "yes", "y", "with"}
_FALSE = {"0", "false", "no", "n", "without"}


def _contrast_in_study(study: Study) -> bool | None:
    text = " ".join([study.description or "", *(study.attrs or {}).get("00321060", {}).get("Value", [])])
    if not text.strip():
        return None
    return bool(_WITH_CONTRAST.search(text))


def protocol_problems(case: Case, study: Study, series_modalities: set[str], series_parts: set[str]) -> list[str]:
    """Human-readable differences between what was ordered and what arrived."""
    problems = []
    if case.modality and series_modalities and case.modality.upper() not in series_modalities:
        problems.append(f"ordered {case.modality}, received {', '.join(sorted(series_modalities))}")
    if case.body_part and series_parts and case.body_part.upper() not in series_parts:
        problems.append(f"ordered body part {case.body_part}, received {', '.join(sorted(series_parts))}")
    wanted = str((case.order_fields or {}).get("contrast", "")).strip().lower()
    got = _contrast_in_study(study)
    if got is not None and ((wanted in _TRUE and not got) or (wanted in _FALSE and got)):
        problems.append(f"ordered {'with' if wanted in _TRUE else 'without'} contrast, "
                        f"study says {'with' if got else 'without'}")
    return problems


def completeness_problems(case: Case, study: Study) -> list[str]:
    fields = case.order_fields or {}
    problems = []
    for key, have, label in (("expected_series", study.num_series, "series"),
                             ("expected_instances", study.num_instances, "instances")):
        try:
            expected = int(fields.get(key, 0) or 0)
        except (TypeError, ValueError):
            continue
        if expected and have < expected:
            problems.append(f"{have} of {expected} expected {label}")
    return problems


def check_case(session: Session, case_id: int) -> list[str]:
    """Run the checks for a case that has its study; flag and queue what is wrong."""
    case = session.get(Case, case_id)
    if case is None or case.study_pk is None:
        return []
    study = session.get(Study, case.study_pk)
    assert study is not None
    rows = session.execute(select(Series.modality, Series.body_part).where(Series.study_pk == study.id)).all()
    modalities = {m.upper() for m, _ in rows if m}
    parts = {b.upper() for _, b in rows if b}
    found: list[tuple[str, str, list[str]]] = []
    mismatch = protocol_problems(case, study, modalities, parts)
    if mismatch:
        found.append((PROTOCOL_MISMATCH, "protocol_mismatch", mismatch))
    missing = completeness_problems(case, study)
    if missing:
        found.append((INCOMPLETE_STUDY, "incomplete_study", missing))
    if not found:
        return []
    flags = sorted(set(case.flags or []) | {flag for flag, _, _ in found})
    reasons = [f"{flag}: {'; '.join(problems)}" for flag, _, problems in found]
    transition(session, case_id, "flagged", data={"checks": reasons}, values={"flags": flags})
    for flag, kind, problems in found:
        exceptions.raise_item(session, case_id=case_id, kind=kind, study_uid=study.study_uid,
                              reason=f"{flag}: {'; '.join(problems)}")
    return reasons
