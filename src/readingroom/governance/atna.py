"""DICOM Audit Messages (PS3.15 Annex A.5, the IHE ATNA format that succeeded RFC 3881).

One ``AuditMessage`` per audit record: the event (EventID, EventActionCode,
EventOutcomeIndicator, EventTypeCode), who took part (the requesting user or
node and this archive, with their DICOM roles), the audit source (this
application) and the objects involved (patient, study, query, user ...).

Our action names are mapped to DICOM event codes by a table of glob patterns
(first match wins) rather than scattered ``if``s, so a new action needs one
line and a reviewer can read the whole mapping at once. The XML is built
with ``xml.etree`` (standard library), which escapes every value.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import json
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Code:
    """A coded value (``csd-code``, coding scheme, meaning) as the DICOM schema's CodedValueType."""

    code: str
    scheme: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# Event IDs (DCID 400) and event types (DCID 401), PS3.16.
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
ORDER_RECORD = _dcm("110109", "Order Record")
PATIENT_RECORD = _dcm("110110", "Patient Record")
PROCEDURE_RECORD = _dcm("110111", "Procedure Record")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = _dcm("110127", "Emergency Override Started")
NETWORK_CONFIGURATION = _dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = _dcm("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User security Attributes Changed")

# Participant roles (DCID 402).
ROLE_APPLICATION = _dcm("110150", "Application")
ROLE_LAUNCHER = _dcm("110151", "Application Launcher")
ROLE_DESTINATION = _dcm("110152", "Destination Role ID")
ROLE_SOURCE = _dcm("110153", "Source Role ID")

# Participant object ID types.
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

#: RFC 3881 audit source type 4: application server process.
SOURCE_APPLICATION_SERVER = _dcm("4", "Application Server")
#: Coding scheme for our own object types (DICOM's convention for private schemes: "99" + name).
PRIVATE_SCHEME = "99READINGROOM"


@dataclass(frozen=True)
class Event:
    """How one kind of action appears in an audit message.

    ``action`` is the EventActionCode (None: derived from the verb of our
    action name); ``requestor`` / ``archive`` are the DICOM roles of the caller
    and of this application in the transfer, when the event has a direction.
    """

    event_id: Code
    action: str | None = None
    type_code: Code | None = None
    requestor: Code | None = None
    archive: Code | None = None


#: Action-name pattern -> event; first match wins, so specific patterns come first.
EVENT_MAP: tuple[tuple[str, Event], ...] = (
    ("application.start", Event(APPLICATION_ACTIVITY, "E", APPLICATION_START, ROLE_LAUNCHER, ROLE_APPLICATION)),
    ("application.stop", Event(APPLICATION_ACTIVITY, "E", APPLICATION_STOP, ROLE_LAUNCHER, ROLE_APPLICATION)),
    ("audit.*", Event(AUDIT_LOG_USED, "R")),
    ("access.break_glass", Event(SECURITY_ALERT, "E", EMERGENCY_OVERRIDE_STARTED)),
    ("access.denied", Event(SECURITY_ALERT, "E", USE_OF_RESTRICTED_FUNCTION)),
    ("access.*", Event(SECURITY_ALERT, "U", OBJECT_SECURITY_ATTRIBUTES_CHANGED)),
    ("association.reject", Event(SECURITY_ALERT, "E", NODE_AUTHENTICATION)),
    # share links: the recipient's passcode is a login; what they see or download is an access or transfer
    ("share.create", Event(EXPORT, "R", None, None, ROLE_SOURCE)),
    ("share.unlock", Event(USER_AUTHENTICATION, "E", LOGIN)),
    ("share.download*", Event(INSTANCES_TRANSFERRED, "R", None, ROLE_DESTINATION, ROLE_SOURCE)),
    ("share.view*", Event(INSTANCES_ACCESSED, "R")),
    ("share.open*", Event(INSTANCES_ACCESSED, "R")),
    ("share.*", Event(SECURITY_ALERT, "U", OBJECT_SECURITY_ATTRIBUTES_CHANGED)),
    # accounts and sign-in
    ("*logout*", Event(USER_AUTHENTICATION, "E", LOGOUT)),
    ("*session*revoke*", Event(USER_AUTHENTICATION, "E", LOGOUT)),
    ("*lock*", Event(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("*login*", Event(USER_AUTHENTICATION, "E", LOGIN)),
    ("*rate_limited*", Event(USER_AUTHENTICATION, "E", LOGIN)),
    ("*role*", Event(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED)),
    ("*membership*", Event(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED)),
    ("*password*", Event(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("*token*", Event(SECURITY_ALERT, None, USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("*totp*", Event(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("*mfa*", Event(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("*oidc*", Event(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("auth.*", Event(USER_AUTHENTICATION, "E", LOGIN)),
    ("user.*", Event(SECURITY_ALERT, None, USER_SECURITY_ATTRIBUTES_CHANGED)),
    ("users.*", Event(SECURITY_ALERT, None, USER_SECURITY_ATTRIBUTES_CHANGED)),
    # configuration
    ("peer.*", Event(SECURITY_ALERT, None, NETWORK_CONFIGURATION)),
    ("peers.*", Event(SECURITY_ALERT, None, NETWORK_CONFIGURATION)),
    ("site.*", Event(SECURITY_ALERT, None, SECURITY_CONFIGURATION)),
    ("sites.*", Event(SECURITY_ALERT, None, SECURITY_CONFIGURATION)),
    ("retention.rule*", Event(SECURITY_ALERT, None, SECURITY_CONFIGURATION)),
    ("*hold*", Event(SECURITY_ALERT, None, SECURITY_CONFIGURATION)),
    ("rules.*", Event(SECURITY_ALERT, None, SOFTWARE_CONFIGURATION)),
    ("reader*", Event(SECURITY_ALERT, None, SOFTWARE_CONFIGURATION)),
    # images
    ("study.delete*", Event(STUDY_DELETED, "D")),
    ("*purge*", Event(STUDY_DELETED, "D")),
    ("retention.*", Event(APPLICATION_ACTIVITY, "E")),
    ("instance.store", Event(INSTANCES_TRANSFERRED, "C", None, ROLE_SOURCE, ROLE_DESTINATION)),
    ("instance.conflict", Event(INSTANCES_TRANSFERRED, "C", None, ROLE_SOURCE, ROLE_DESTINATION)),
    ("study.import", Event(IMPORT, "C", None, ROLE_SOURCE, ROLE_DESTINATION)),
    ("study.retrieve", Event(INSTANCES_TRANSFERRED, "R", None, ROLE_DESTINATION, ROLE_SOURCE)),
    ("study.send", Event(INSTANCES_TRANSFERRED, "R", None, None, ROLE_SOURCE)),
    ("study.*", Event(INSTANCES_ACCESSED, "R")),
    ("query", Event(QUERY, "E", None, ROLE_SOURCE, ROLE_DESTINATION)),
    ("*.query", Event(QUERY, "E", None, ROLE_SOURCE, ROLE_DESTINATION)),
    # workflow
    ("order*", Event(ORDER_RECORD)),
    ("case.*", Event(PROCEDURE_RECORD)),
    ("report.*", Event(PROCEDURE_RECORD)),
)
#: Anything unmapped: a patient record event when it names a patient, else a restricted function was used.
FALLBACK_PATIENT = Event(PATIENT_RECORD)
FALLBACK = Event(SECURITY_ALERT, None, USE_OF_RESTRICTED_FUNCTION)

_VERBS = (
    ("R", ("read", "get", "view", "retrieve", "search", "list", "export", "metadata", "access")),
    ("C", ("create", "add", "store", "new", "grant", "import", "issue")),
    ("D", ("delete", "remove", "purge", "destroy")),
    ("U", ("update", "replace", "change", "set", "edit", "close", "review", "revoke", "release", "assign",
           "claim", "reroute", "cancel", "disable", "enable", "reset")),
)

#: EventOutcomeIndicator: 0 success, 4 minor failure (request refused or failed), 8 serious, 12 major failure.
_OUTCOMES = {"success": "0", "ok": "0", "warning": "4", "failure": "4", "denied": "4", "rejected": "4",
             "refused": "4", "error": "8", "fatal": "12", "unavailable": "12"}

_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def event_for(action: str, patient_id: str = "") -> Event:
    """The DICOM event an action of ours is reported as."""
    for pattern, event in EVENT_MAP:
        if fnmatch.fnmatchcase(action, pattern):
            return event
    return FALLBACK_PATIENT if patient_id else FALLBACK


def action_code(action: str, event: Event) -> str:
    """EventActionCode: the event's own, else from the last word of our action name (default Execute)."""
    if event.action:
        return event.action
    verb = re.split(r"[._\-]", action)[-1].lower()
    for code, words in _VERBS:
        if any(verb.startswith(word) for word in words):
            return code
    return "E"


def outcome_indicator(outcome: str) -> str:
    return _OUTCOMES.get(outcome.lower(), "4")


def _clean(value: Any) -> str:
    """A string XML 1.0 can carry (control characters from DICOM or HTTP headers are dropped)."""
    return _XML_INVALID.sub("", str(value))


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _access_point(source: str) -> tuple[str, str] | None:
    """NetworkAccessPointID and its type: 2 for an IP address, 1 for a machine name."""
    host = source.strip()
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        return host, "2"
    except ValueError:
        return host, "1"


def event_datetime(at: datetime | None) -> str:
    value = (at or datetime.now(UTC)).astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AuditSource:
    """This application as the audit source and as a participant (its AE title and host)."""

    source_id: str
    host: str = ""
    enterprise_site_id: str = ""

    @classmethod
    def of(cls, settings: Any) -> AuditSource:
        return cls(source_id=settings.aet, host=socket.getfqdn())


def audit_message(record: Any, source: AuditSource) -> ET.Element:
    """The ``AuditMessage`` element of one audit record (any object with the AuditRecord columns)."""
    action = str(record.action)
    patient_id = str(record.patient_id or "")
    event = event_for(action, patient_id)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action_code(action, event), "EventDateTime": event_datetime(record.at),
        "EventOutcomeIndicator": outcome_indicator(str(record.outcome or "success"))})
    _coded(ident, "EventID", event.event_id)
    if event.type_code:
        _coded(ident, "EventTypeCode", event.type_code)
    if record.reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = _clean(record.reason)

    requestor = ET.SubElement(root, "ActiveParticipant", {"UserID": _clean(record.actor or "unknown"),
                                                          "UserIsRequestor": "true"})
    point = _access_point(str(record.source or ""))
    if point:
        requestor.set("NetworkAccessPointID", _clean(point[0]))
        requestor.set("NetworkAccessPointTypeCode", point[1])
    if event.requestor:
        _coded(requestor, "RoleIDCode", event.requestor)
    archive = ET.SubElement(root, "ActiveParticipant", {"UserID": _clean(source.source_id),
                                                        "AlternativeUserID": f"AETITLES={_clean(source.source_id)}",
                                                        "UserIsRequestor": "false"})
    if source.host:
        archive.set("NetworkAccessPointID", _clean(source.host))
        archive.set("NetworkAccessPointTypeCode", "1")
    if event.archive:
        _coded(archive, "RoleIDCode", event.archive)

    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _clean(source.source_id)})
    if source.enterprise_site_id:
        audit_source.set("AuditEnterpriseSiteID", _clean(source.enterprise_site_id))
    _coded(audit_source, "AuditSourceTypeCode", SOURCE_APPLICATION_SERVER)

    for obj in _participant_objects(record, event):
        root.append(obj)
    return root


def _object(object_id: str, type_code: str, role: str, id_type: Code, name: str = "") -> ET.Element:
    element = ET.Element("ParticipantObjectIdentification", {
        "ParticipantObjectID": _clean(object_id), "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    if name:
        ET.SubElement(element, "ParticipantObjectName").text = _clean(name)
    return element


def _participant_objects(record: Any, event: Event) -> list[ET.Element]:
    """Patient (person, role patient), study (system object, role report), query, or the changed resource."""
    objects: list[ET.Element] = []
    detail = record.detail if isinstance(record.detail, dict) else {}
    kind, rid = str(record.resource_type or ""), str(record.resource_id or "")
    if record.patient_id:
        objects.append(_object(str(record.patient_id), "1", "1", PATIENT_NUMBER))
    study = rid if kind == "study" else str(detail.get("study") or "") if kind == "instance" else ""
    if study:
        objects.append(_object(study, "2", "3", STUDY_INSTANCE_UID))
    if event.event_id == QUERY:
        query = _object(str(detail.get("model") or STUDY_ROOT_FIND), "2", "3", SOP_CLASS_UID)
        filters = detail.get("filters", {})
        text = json.dumps(filters, sort_keys=True, ensure_ascii=False).encode("utf-8")
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(text).decode("ascii")
        objects.append(query)
    elif kind in ("user", "token") and rid:
        objects.append(_object(rid, "1", "6", USER_IDENTIFIER))
    elif kind and rid and kind not in ("study", "instance", "query"):
        objects.append(_object(rid, "2", "4", Code(kind, PRIVATE_SCHEME, kind.replace("_", " "))))
    return objects


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def to_bytes(message: ET.Element, *, declaration: bool = True) -> bytes:
    """UTF-8 XML of one message on one line (no pretty-printing, so one message is one line of an export)."""
    body = ET.tostring(message, encoding="unicode").encode("utf-8")
    return XML_DECLARATION + body if declaration else body
