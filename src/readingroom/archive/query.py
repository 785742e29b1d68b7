"""Search the index at the patient, study, series or instance level.

The one query engine behind C-FIND and QIDO-RS. Matching keys that map to
an indexed column are evaluated in SQL (so paging and counts stay cheap);
any other attribute of the level is matched against the stored DICOM JSON
of the candidates. Results are DICOM JSON objects (PS3.18 Annex F) with the
computed attributes (counts, ModalitiesInStudy, RetrieveURL, availability).
"""

from __future__ import annotations

from typing import Any

import orjson
from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from readingroom.archive import attributes as A
from readingroom.archive.matching import json_matches, list_contains_condition, sql_condition
from readingroom.archive.models import Instance, Patient, Series, Study
from readingroom.archive.parsing import BASE_PLACEHOLDER

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# tag -> (column, VR) for every attribute with an indexed column, per table.
PATIENT_COLUMNS: dict[str, tuple[Any, str]] = {
    "00100010": (Patient.name, "PN"),
    "00100020": (Patient.patient_id, "LO"),
    "00100021": (Patient.issuer, "LO"),
    "00100030": (Patient.birth_date, "DA"),
    "00100040": (Patient.sex, "CS"),
}
STUDY_COLUMNS: dict[str, tuple[Any, str]] = {
    "0020000D": (Study.study_uid, "UI"),
    "00080020": (Study.study_date, "DA"),
    "00080030": (Study.study_time, "TM"),
    "00080050": (Study.accession_number, "SH"),
    "00200010": (Study.study_id, "SH"),
    "00081030": (Study.description, "LO"),
    "00080090": (Study.referring_physician, "PN"),
    "00080080": (Study.institution_name, "LO"),
}
SERIES_COLUMNS: dict[str, tuple[Any, str]] = {
    "0020000E": (Series.series_uid, "UI"),
    "00080060": (Series.modality, "CS"),
    "00200011": (Series.series_number, "IS"),
    "0008103E": (Series.description, "LO"),
    "00180015": (Series.body_part, "CS"),
    "00400244": (Series.performed_start_date, "DA"),
    "00400245": (Series.performed_start_time, "TM"),
}
INSTANCE_COLUMNS: dict[str, tuple[Any, str]] = {
    "00080018": (Instance.sop_uid, "UI"),
    "00080016": (Instance.sop_class_uid, "UI"),
    "00200013": (Instance.instance_number, "IS"),
    "00280010": (Instance.rows, "US"),
    "00280011": (Instance.columns, "US"),
    "00280100": (Instance.bits_allocated, "US"),
    "00280008": (Instance.number_of_frames, "IS"),
    "00083002": (Instance.transfer_syntax_uid, "UI"),
}
COMPUTED = {
    A.MODALITIES_IN_STUDY, A.NUM_STUDY_SERIES, A.NUM_STUDY_INSTANCES, A.NUM_SERIES_INSTANCES,
    A.NUM_PATIENT_STUDIES, A.NUM_PATIENT_SERIES, A.NUM_PATIENT_INSTANCES, A.INSTANCE_AVAILABILITY,
    A.RETRIEVE_URL, A.RETRIEVE_AE_TITLE, A.QUERY_RETRIEVE_LEVEL, "00080005",
}


class QueryError(ValueError):
    """A query that cannot be run; the message says why (-> 400 / C-FIND failure)."""


def keyword_to_tag(key: str) -> str:
    """``PatientName`` or ``00100010`` (or ``0010,0010``) to ``00100010``; ValueError if unknown."""
    k = key.strip().replace(",", "").replace("(", "").replace(")", "")
    if len(k) == 8 and all(c in "0123456789abcdefABCDEF" for c in k):
        return k.upper()
    tag = tag_for_keyword(key.strip())
    if tag is None:
        raise ValueError(f"unknown attribute {key!r}")
    return f"{tag:08X}"


def vr_of(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def _int_condition(column: Any, value: str) -> Any:
    values = [v for v in value.replace(",", "\\").split("\\") if v.strip()]
    try:
        ints = [int(v) for v in values]
    except ValueError as exc:
        raise QueryError(f"not an integer: {value!r}") from exc
    return column.in_(ints)


def _apply(q: Select[Any], columns: dict[str, tuple[Any, str]], filters: dict[str, str], fuzzy: bool,
           used: set[str]) -> Select[Any]:
    for tag, value in filters.items():
        if tag not in columns or not value.strip():
            continue
        column, vr = columns[tag]
        used.add(tag)
        if vr in ("IS", "US"):
            q = q.where(_int_condition(column, value))
        else:
            try:
                q = q.where(sql_condition(column, value, vr, fuzzy=fuzzy))
            except ValueError as exc:
                raise QueryError(str(exc)) from exc
    return q


def _loads(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return orjson.loads(value) if value else {}


def _post_filter(item: dict[str, Any], filters: dict[str, str], used: set[str], fuzzy: bool) -> bool:
    for tag, value in filters.items():
        if tag in used or tag in COMPUTED or not value.strip():
            continue
        head, _, sub = tag.partition(".")
        if sub:
            elem = item.get(head) or {}
            items = elem.get("Value") or []
            sub_tag = sub.split(".")[-1]
            if not any(json_matches(it.get(sub_tag), value, vr_of(sub_tag), fuzzy=fuzzy) for it in items):
                return False
        elif not json_matches(item.get(tag), value, vr_of(tag), fuzzy=fuzzy):
            return False
    return True


def _study_url(study_uid: str) -> str:
    return f"{BASE_PLACEHOLDER}/studies/{study_uid}"


def _common(item: dict[str, Any], url: str) -> None:
    item[A.RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    item[A.INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}


def _study_json(study: Study, patient: Patient) -> dict[str, Any]:
    item = {**_loads(patient.attrs), **_loads(study.attrs)}
    item[A.MODALITIES_IN_STUDY] = {"vr": "CS", "Value": study.modalities.split("\\")} if study.modalities \
        else {"vr": "CS"}
    item[A.NUM_STUDY_SERIES] = A.json_int(study.num_series)
    item[A.NUM_STUDY_INSTANCES] = A.json_int(study.num_instances)
    item.setdefault("0020000D", {"vr": "UI", "Value": [study.study_uid]})
    _common(item, _study_url(study.study_uid))
    return item


def _series_json(series: Series, study: Study) -> dict[str, Any]:
    item = _loads(series.attrs)
    item["0020000D"] = {"vr": "UI", "Value": [study.study_uid]}
    item[A.NUM_SERIES_INSTANCES] = A.json_int(series.num_instances)
    item.setdefault("0020000E", {"vr": "UI", "Value": [series.series_uid]})
    _common(item, f"{_study_url(study.study_uid)}/series/{series.series_uid}")
    return item


def _instance_json(inst: Instance, series: Series, study: Study, include_all: bool) -> dict[str, Any]:
    item = _loads(inst.metadata_json) if include_all else _loads(inst.attrs)
    item.pop("7FE00010", None) if not include_all else None
    item["0020000D"] = {"vr": "UI", "Value": [study.study_uid]}
    item["0020000E"] = {"vr": "UI", "Value": [series.series_uid]}
    item[A.AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [inst.transfer_syntax_uid]}
    _common(item, f"{_study_url(study.study_uid)}/series/{series.series_uid}/instances/{inst.sop_uid}")
    return item


def _page(rows: list[Any], offset: int, limit: int | None) -> list[Any]:
    return rows[offset: offset + limit] if limit is not None else rows[offset:]


def search(
    session: Session,
    level: str,
    filters: dict[str, str],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    fuzzy: bool = False,
    limit: int | None = None,
    offset: int = 0,
    include_all: bool = False,
    scope: ColumnElement[bool] | None = None,
) -> list[dict[str, Any]]:
    """Matching entities at ``level`` as DICOM JSON, ordered stably for paging.

    ``scope`` is the caller's visibility (``policy.visible_studies``), a
    condition on ``Study`` applied at every level, so a search can never
    reveal a study, series or patient count the caller may not read.
    """
    level = level.upper()
    if level not in LEVELS:
        raise QueryError(f"unknown query level {level!r}")
    if offset < 0 or (limit is not None and limit < 0):
        raise QueryError("limit and offset must not be negative")
    filters = {k.upper(): v for k, v in filters.items()}
    used: set[str] = set()
    if level == "PATIENT":
        return _search_patients(session, filters, fuzzy, limit, offset, used, scope)
    if level == "STUDY":
        q = select(Study, Patient).join(Patient, Patient.id == Study.patient_pk)
        if scope is not None:
            q = q.where(scope)
        q = _apply(q, PATIENT_COLUMNS, filters, fuzzy, used)
        q = _apply(q, STUDY_COLUMNS, filters, fuzzy, used)
        if study_uid:
            q = q.where(Study.study_uid == study_uid)
        mod = filters.get(A.MODALITIES_IN_STUDY, "").strip()
        if mod:
            q = q.where(list_contains_condition(Study.modalities, mod))
        q = q.order_by(Study.id)
        return _run(session, q, filters, used, fuzzy, limit, offset, lambda r: _study_json(r[0], r[1]))
    if level == "SERIES":
        q = (select(Series, Study, Patient).join(Study, Study.id == Series.study_pk)
             .join(Patient, Patient.id == Study.patient_pk))
        if scope is not None:
            q = q.where(scope)
        if study_uid:
            q = q.where(Study.study_uid == study_uid)
        q = _apply(q, PATIENT_COLUMNS, filters, fuzzy, used)
        q = _apply(q, STUDY_COLUMNS, filters, fuzzy, used)
        q = _apply(q, SERIES_COLUMNS, filters, fuzzy, used)
        q = q.order_by(Series.study_pk, Series.series_number, Series.id)
        scoped = study_uid is not None

        def build(r: Any) -> dict[str, Any]:
            item = _series_json(r[0], r[1])
            return item if scoped else {**_study_json(r[1], r[2]), **item}

        return _run(session, q, filters, used, fuzzy, limit, offset, build)
    q = (select(Instance, Series, Study, Patient).join(Series, Series.id == Instance.series_pk)
         .join(Study, Study.id == Instance.study_pk).join(Patient, Patient.id == Study.patient_pk))
    if scope is not None:
        q = q.where(scope)
    if study_uid:
        q = q.where(Study.study_uid == study_uid)
    if series_uid:
        q = q.where(Series.series_uid == series_uid)
    q = _apply(q, PATIENT_COLUMNS, filters, fuzzy, used)
    q = _apply(q, STUDY_COLUMNS, filters, fuzzy, used)
    q = _apply(q, SERIES_COLUMNS, filters, fuzzy, used)
    q = _apply(q, INSTANCE_COLUMNS, filters, fuzzy, used)
    q = q.order_by(Instance.series_pk, Instance.instance_number, Instance.id)

    def build_inst(r: Any) -> dict[str, Any]:
        item = _instance_json(r[0], r[1], r[2], include_all)
        if series_uid:
            return item
        merged = _series_json(r[1], r[2])
        if not study_uid:
            merged = {**_study_json(r[2], r[3]), **merged}
        return {**merged, **item}

    return _run(session, q, filters, used, fuzzy, limit, offset, build_inst)


def _needs_post_filter(filters: dict[str, str], used: set[str]) -> bool:
    return any(v.strip() and k not in used and k not in COMPUTED for k, v in filters.items())


def _run(session: Session, q: Select[Any], filters: dict[str, str], used: set[str], fuzzy: bool,
         limit: int | None, offset: int, build: Any) -> list[dict[str, Any]]:
    if not _needs_post_filter(filters, used):
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        return [build(r) for r in session.execute(q).all()]
    out = [item for item in (build(r) for r in session.execute(q).all())
           if _post_filter(item, filters, used, fuzzy)]
    return _page(out, offset, limit)


def _search_patients(session: Session, filters: dict[str, str], fuzzy: bool, limit: int | None, offset: int,
                     used: set[str], scope: ColumnElement[bool] | None = None) -> list[dict[str, Any]]:
    counts_q = select(
        Study.patient_pk.label("pk"),
        func.count(Study.id).label("n_studies"),
        func.coalesce(func.sum(Study.num_series), 0).label("n_series"),
        func.coalesce(func.sum(Study.num_instances), 0).label("n_instances"),
    ).group_by(Study.patient_pk)
    if scope is not None:  # only patients with a visible study, counting only visible studies
        counts_q = counts_q.where(scope)
    counts = counts_q.subquery()
    q = select(Patient, counts.c.n_studies, counts.c.n_series, counts.c.n_instances).join(
        counts, counts.c.pk == Patient.id)
    q = _apply(q, PATIENT_COLUMNS, filters, fuzzy, used).order_by(Patient.id)

    def build(r: Any) -> dict[str, Any]:
        item = _loads(r[0].attrs)
        item[A.NUM_PATIENT_STUDIES] = A.json_int(int(r[1]))
        item[A.NUM_PATIENT_SERIES] = A.json_int(int(r[2]))
        item[A.NUM_PATIENT_INSTANCES] = A.json_int(int(r[3]))
        return item

    return _run(session, q, filters, used, fuzzy, limit, offset, build)


def with_base(obj: dict[str, Any] | list[Any], base_url: str) -> bytes:
    """Serialise DICOM JSON with the placeholder base replaced by the real one."""
    return orjson.dumps(obj).replace(BASE_PLACEHOLDER.encode(), base_url.encode())
