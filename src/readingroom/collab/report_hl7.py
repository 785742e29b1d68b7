"""A signed report as an HL7 v2.5 ORU^R01 message (MSH, PID, PV1, ORC, OBR, one OBX per section).

Result status (OBR-25 and OBX-11) follows HL7 table 0123: ``P`` for a
preliminary, ``F`` for the final, ``C`` (corrected) for a version with an
addendum. Text is sent as formatted text (FT): the five delimiters escaped
(``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``), lines joined by ``\\.br\\``, and
other characters as UTF-8 (MSH-18 ``UNICODE UTF-8``): the ``hl7`` library's
own ``escape`` writes non-ASCII characters as ``\\X..\\`` code points, which
receivers (and its own ``unescape``) read back as bytes, so it is not used
for text. A receiver gets the report's lines back exactly (``unescape``). The
message control id is derived from case and version, so an outbox that
re-sends a message sends the same id and the receiver can deduplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.report_reads import ReportDocument, document
from readingroom.collab.reports import RESULT_STATUS

SENDING_APPLICATION = "READINGROOM"
#: OBR-4 universal service id when the order gave none: LOINC "Diagnostic imaging study".
SERVICE = ("18748-4", "Diagnostic imaging study", "LN")
_PV1_CLASS = {"E": "E", "ED": "E", "I": "I", "IP": "I", "INPATIENT": "I", "O": "O", "OP": "O",
              "OUTPATIENT": "O", "EMERGENCY": "E"}
_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})


def esc(value: str) -> str:
    """One component's value with the HL7 delimiters escaped (line breaks become spaces)."""
    return value.replace("\r", " ").replace("\n", " ").translate(_ESCAPES) if value else ""


def text_value(text: str) -> str:
    """A multi-line text as one FT value: each line escaped, lines joined by the ``\\.br\\`` escape."""
    return "\\.br\\".join(line.translate(_ESCAPES) for line in text.replace("\r\n", "\n").split("\n"))


def _ts(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _person(pn: str) -> str:
    """A DICOM person name (family^given^middle^prefix^suffix) as HL7 XPN/XCN name components."""
    parts = (pn or "").split("=", 1)[0].split("^") + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return "^".join(esc(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def _segment(*fields: str) -> str:
    return "|".join(fields).rstrip("|")


def build_oru(session: Session, case_id: int, number: int | None = None, *, now: datetime | None = None) -> str:
    """The ORU^R01 of a signed version of the case's report (default: the latest signed one)."""
    return render_oru(document(session, case_id, number, signed_only=True), now=now)


def render_oru(doc: ReportDocument, *, now: datetime | None = None) -> str:
    """The message for one report document; segments separated by carriage returns (HL7 v2 framing)."""
    status = RESULT_STATUS.get(doc.kind)
    if status is None:
        raise ValueError(f"only signed versions are sent, not a {doc.kind}")
    signed_at = _ts(doc.created_at)
    observed = doc.study_date + (doc.study_time.split(".")[0] if doc.study_time else "")
    filler = f"{doc.case_id}^{SENDING_APPLICATION}"
    service = "^".join(esc(v) for v in (doc.modality + (" " + doc.body_part if doc.body_part else ""),
                                        doc.description)) + "^L" if doc.modality else "^".join(SERVICE)
    obr = [""] * 33
    obr[0:5] = ["OBR", "1", esc(doc.accession_number), filler, service]
    obr[7] = observed
    obr[16] = _person(doc.ordering_physician)
    obr[22] = signed_at
    obr[24] = "RAD"
    obr[25] = status
    obr[32] = _person(doc.signer) if "^" in doc.signer else esc(doc.signer)
    segments = [
        _segment("MSH", "^~\\&", SENDING_APPLICATION, esc(doc.site_code), "", "", _ts(now or utcnow()), "",
                 "ORU^R01^ORU_R01", f"RR{doc.case_id}V{doc.number}", "P", "2.5", "", "", "", "", "",
                 "UNICODE UTF-8"),
        _segment("PID", "1", "", f"{esc(doc.patient_id)}^^^{esc(doc.patient_issuer)}".rstrip("^"), "",
                 _person(doc.patient_name), "", doc.birth_date, esc(doc.sex)),
        _segment("PV1", "1", _PV1_CLASS.get(doc.patient_class.upper(), "U")),
        _segment("ORC", "RE", esc(doc.accession_number), filler, "", "CM"),
        _segment(*obr),
    ]
    n = 0
    for section in doc.sections:
        if not section.text.strip():
            continue
        n += 1
        segments.append(_segment("OBX", str(n), "FT", f"{section.id}^{esc(section.title)}^L", "",
                                 text_value(section.text), "", "", "", "", "", status, "", "", signed_at))
    for addendum in doc.addenda:
        n += 1
        segments.append(_segment("OBX", str(n), "FT", "addendum^Addendum^L", str(addendum.number),
                                 text_value(addendum.text), "", "", "", "", "", status, "", "",
                                 _ts(addendum.signed_at)))
    return "\r".join(segments) + "\r"
