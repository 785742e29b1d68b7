"""The CapabilityStatement at ``/fhir/metadata``: exactly the interactions and search parameters implemented.

Built from the same :data:`~readingroom.interop.fhir_queries.KINDS` table the
searches run on, so the statement cannot promise a parameter the server
ignores, nor hide one it supports.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from readingroom import __version__
from readingroom.clock import utcnow
from readingroom.interop.fhir_queries import KINDS
from readingroom.interop.fhir_search import COMMON_PARAMS, FHIR_JSON

#: Search parameter -> (FHIR type, what it matches), for the statement's documentation.
PARAM_DOCS: dict[str, tuple[str, str]] = {
    "_id": ("token", "the logical id"),
    "_lastUpdated": ("date", "meta.lastUpdated, with eq/ge/gt/le/lt prefixes; repeat for a range"),
    "patient": ("reference", "Patient/{id} or the id"),
    "identifier": ("token", "system|value or value"),
    "status": ("token", "the resource's status code(s), comma-separated"),
    "name": ("string", "part of the patient's name"),
    "part-of": ("reference", "Task/{id}: the child reads (consults, second opinions) of a case"),
}
#: Interactions beyond read and search-type.
WRITES: dict[str, list[str]] = {"ServiceRequest": ["create", "update"], "Task": ["update"]}
DOCS = {
    "Patient": "Archive patients (one identifier per issuer); merged records link to their survivor.",
    "ImagingStudy": "Studies with series and instances; id = Study Instance UID; DICOMweb endpoint contained.",
    "ServiceRequest": "Imaging orders; create places an order (a waiting case); update changes or revokes it.",
    "DiagnosticReport": "The latest signed version of a case's report; id = report-{case id}.",
    "Task": "Worklist cases and child reads; update status to claim (in-progress), release (ready), "
            "complete or cancel.",
    "Communication": "Critical results: in-progress while sent, completed once acknowledged.",
}


def capability_statement(fhir_base: str) -> dict[str, Any]:
    resources = []
    for name, kind in KINDS.items():
        params = sorted(kind.params | (COMMON_PARAMS - {"_count", "_offset", "_format"}))
        resources.append({
            "type": name,
            "documentation": DOCS[name],
            "interaction": [{"code": code} for code in ["read", "search-type", *WRITES.get(name, [])]],
            "updateCreate": False if name in WRITES else None,
            "searchParam": [{"name": p, "type": PARAM_DOCS[p][0], "documentation": PARAM_DOCS[p][1]}
                            for p in params],
        })
    data = {
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": utcnow().isoformat(), "publisher": "ReadingRoom", "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "software": {"name": "ReadingRoom", "version": __version__},
        "implementation": {"description": "ReadingRoom FHIR R4 endpoint", "url": fhir_base},
        "rest": [{
            "mode": "server",
            "documentation": "Search paging: _count (default 20, at most 200) and _offset; unknown parameters "
                             "are ignored and reported (Prefer: handling=lenient, the default) or refused with "
                             "400 (Prefer: handling=strict).",
            "security": {"description": "Authorization: Bearer <token> or HTTP Basic, as the REST API; results "
                                        "are scoped to what the caller may see."},
            "resource": [{k: v for k, v in r.items() if v is not None} for r in resources],
        }],
    }
    return CapabilityStatement.model_validate(data).model_dump(mode="json", exclude_none=True)
