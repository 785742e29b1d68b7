"""C-FIND SCP: Patient Root and Study Root queries answered from the index.

The edge only translates: the identifier becomes a ``{tag: matching
string}`` dict for ``readingroom.archive.query.search`` (the same engine
QIDO-RS uses, so both protocols match alike), and each DICOM JSON result is
cut down to the keys the SCU asked for. Empty keys are return keys
(universal matching), which ``search`` already treats as "no filter".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from readingroom.archive import attributes as A
from readingroom.archive.dimse_policy import Caller
from readingroom.archive.parsing import BASE_PLACEHOLDER
from readingroom.archive.query import QueryError, search
from readingroom.governance import audit
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
LEVELS_BY_MODEL = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
#: Keys the edge fills itself rather than matching on.
_EDGE_KEYS = {A.QUERY_RETRIEVE_LEVEL, "00080005", A.RETRIEVE_AE_TITLE}

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_NOT_AUTHORISED = 0x0124
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700

Requested = list[tuple[str, str]]  # (tag, VR) in the order the SCU sent them


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset; ErrorComment (LO) carries the reason to the SCU."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def matching_string(elem: DataElement) -> str:
    """An identifier element's value as a DICOM matching string (lists joined by backslash)."""
    value = elem.value
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def parse_identifier(ds: Dataset) -> tuple[dict[str, str], Requested]:
    """Split an identifier into matching filters and the keys to return.

    Sequence keys match on their first item's non-empty attributes
    (``"SEQTAG.ITEMTAG"`` filters, which ``search`` understands).
    """
    filters: dict[str, str] = {}
    requested: Requested = []
    for elem in ds:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private:
            continue
        tag = f"{int(elem.tag):08X}"
        if tag in _EDGE_KEYS:
            continue
        requested.append((tag, elem.VR))
        if elem.VR == "SQ":
            items = elem.value or []
            if items:
                for sub in items[0]:
                    text = matching_string(sub) if sub.VR != "SQ" else ""
                    if text.strip():
                        filters[f"{tag}.{int(sub.tag):08X}"] = text
            continue
        filters[tag] = matching_string(elem)
    return filters, requested


def _has_non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, dict):
        return any(_has_non_ascii(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_ascii(v) for v in value)
    return False


def build_response(item: dict[str, Any], requested: Requested, level: str, rt: Runtime) -> Dataset:
    """The response identifier: exactly the requested keys (empty when unknown) plus the edge keys."""
    subset: dict[str, Any] = {}
    for tag, vr in requested:
        elem = item.get(tag)
        if elem is None or "BulkDataURI" in elem or "InlineBinary" in elem:
            subset[tag] = {"vr": vr}
        elif tag == A.RETRIEVE_URL:
            urls = [u.replace(BASE_PLACEHOLDER, f"{rt.settings.base_url}/dicomweb") for u in elem.get("Value", [])]
            subset[tag] = {"vr": elem.get("vr", vr), "Value": urls} if urls else {"vr": vr}
        else:
            subset[tag] = elem
    ds = Dataset.from_json(subset)
    ds.SpecificCharacterSet = "ISO_IR 192" if _has_non_ascii(subset) else ""
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = rt.settings.aet
    return ds


def handle_find(rt: Runtime, event: Any, caller: Caller) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND generator: (status, identifier) pairs, honouring C-CANCEL."""
    if not caller.may("query"):
        audit.record_now(rt.db, actor=caller.ae_title, source=caller.source, action="archive.query",
                         outcome="failure", resource_type="query", reason="peer may not query")
        yield status(STATUS_NOT_AUTHORISED, "this AE title may not query"), None
        return
    model = str(event.request.AffectedSOPClassUID)
    try:
        ident = event.identifier
        level = str(ident.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception as exc:  # undecodable identifier
        yield status(STATUS_UNABLE_TO_PROCESS, f"cannot decode identifier: {exc}"), None
        return
    allowed = LEVELS_BY_MODEL.get(model, ())
    if level not in allowed:
        yield status(STATUS_IDENTIFIER_MISMATCH,
                     f"QueryRetrieveLevel {level or '(none)'} not in {'/'.join(allowed)}"), None
        return
    filters, requested = parse_identifier(ident)
    include_all = level == "IMAGE" and any(tag not in A.INSTANCE_TAGS for tag, _ in requested)
    try:
        with rt.db.read_session() as s:
            results = search(s, level, filters, include_all=include_all)
    except QueryError as exc:
        yield status(STATUS_UNABLE_TO_PROCESS, str(exc)), None
        return
    except Exception:
        log.exception("C-FIND failed")
        yield status(STATUS_OUT_OF_RESOURCES, "query failed; try again later"), None
        return
    audit.record_now(
        rt.db, actor=caller.ae_title, source=caller.source, action="archive.query", resource_type="query",
        resource_id=level, detail={"service": "C-FIND", "model": model, "level": level, "results": len(results),
                                   "filters": {k: v for k, v in filters.items() if v.strip()}},
    )
    for item in results:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, build_response(item, requested, level, rt)
