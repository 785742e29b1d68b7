"""Report outputs: FHIR R4 DiagnosticReport, HL7 v2.5 ORU^R01, HTML and PDF; the signing hook."""

from __future__ import annotations

import base64
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from readingroom.collab import reports
from readingroom.collab.reports_models import Report
from readingroom.workflow.models import Case
from tests.collab.report_fixtures import Desk, clock, make_desk  # noqa: F401  (fixture)
from tests.workflow.conftest import network  # noqa: F401  (fixture)

TRICKY = "Lesion 4|5 mm ^ stable & unchanged ~ see \\ note.\nSecond line <b>not bold</b> — µ."


@pytest.fixture()
def signed(network, tmp_path: Path, clock) -> tuple[Desk, dict, dict]:  # noqa: F811
    """A final report (with a tricky findings text) and then an addendum to it."""
    desk = make_desk(network, tmp_path, clock)
    draft = desk.put({"findings": TRICKY, "impression": "Stable lesion.", "haemorrhage": "absent"},
                     desk.get().headers["ETag"]).json()
    prelim = desk.sign("preliminary", draft["etag"]).json()
    desk.tick(60)
    final = desk.sign("final", prelim["etag"]).json()
    desk.tick(3600)
    added = desk.addendum("Outside MRI reviewed | no change.", final["etag"]).json()
    return desk, prelim, final | {"addended": added}


def _obx(message: hl7.Message) -> dict[str, str]:
    return {str(seg[3][0][0]): message.unescape(str(seg[5])) for seg in message.segments("OBX")}


def test_oru_parses_back_with_the_text_and_status(signed) -> None:
    desk, prelim, final = signed
    for version, status in ((prelim["version"], "P"), (final["version"], "F"), (None, "C")):
        r = desk.get("ref", "/hl7", params={"version": version} if version else {})
        assert r.status_code == 200 and r.headers["content-type"].startswith("x-application/hl7-v2+er7")
        message = hl7.parse(r.text)
        assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(message.segment("MSH")[12]) == "2.5"
        assert str(message.segment("MSH")[18]) == "UNICODE UTF-8"
        assert [str(s[0]) for s in message] == ["MSH", "PID", "PV1", "ORC", "OBR", *["OBX"] * len(_obx(message))]
        assert str(message.segment("PID")[3]).split("^")[0] == "P-REPORT"
        assert str(message.segment("PID")[5]) == "Doe^Jane"
        assert str(message.segment("OBR")[2]) == "ACC-REP-1"
        assert str(message.segment("OBR")[25]) == status
        assert {str(seg[11]) for seg in message.segments("OBX")} == {status}
        obx = _obx(message)
        assert obx["findings"].replace("\r", "\n") == TRICKY
        assert obx["impression"] == "Stable lesion." and obx["haemorrhage"] == "absent"
        assert ("addendum" in obx) == (status == "C")
    latest = hl7.parse(desk.get("ref", "/hl7").text)
    assert _obx(latest)["addendum"] == "Outside MRI reviewed | no change."


def test_fhir_diagnostic_report_validates(signed) -> None:
    desk, prelim, final = signed
    expected = {prelim["version"]: "preliminary", final["version"]: "final", None: "appended"}
    for version, status in expected.items():
        r = desk.get("ref", "/fhir", params={"version": version} if version else {})
        assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json"
        resource = DiagnosticReport.model_validate_json(r.content)  # R4 shape (fhir.resources' R4B models)
        assert resource.status == status
        assert resource.conclusion == "Stable lesion."
        assert resource.code.coding[0].code == "18748-4"
        assert resource.subject.identifier.value == "P-REPORT"
        assert resource.identifier[1].value == "ACC-REP-1"
        assert resource.resultsInterpreter[0].display == "Ann Reader, MD"
        text = base64.b64decode(r.json()["presentedForm"][0]["data"]).decode()
        assert resource.presentedForm[0].data.decode() == text  # the model decodes base64 itself
        assert TRICKY in text and ("Outside MRI reviewed" in text) == (status == "appended")
        findings = next(o for o in resource.contained if o.id == "section-findings")
        assert findings.valueString == TRICKY
        assert {r.reference for r in resource.result} >= {"#section-findings", "#section-impression"}


def test_html_and_pdf_render_for_referrers(signed) -> None:
    desk, prelim, _final = signed
    html = desk.get("ref", "/html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html.text and "<b>not bold</b>" not in html.text
    assert "Doe Jane" in html.text and "Outside MRI reviewed | no change." in html.text
    assert "Ann Reader, MD" in html.text and "Final, with addendum" in html.text
    early = desk.get("ref", "/html", params={"version": prelim["version"]}).text
    assert "PRELIMINARY" in early and "Outside MRI" not in early
    pdf = desk.get("ref", "/pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and pdf.content.rstrip().endswith(b"%%EOF")
    assert len(pdf.content) > 1000


def test_signing_hook_runs_in_the_transaction(network, tmp_path: Path, clock) -> None:  # noqa: F811
    desk = make_desk(network, tmp_path, clock)
    seen: list[reports.SignedReport] = []

    def outbox(session, signed: reports.SignedReport) -> None:
        from readingroom.collab.report_hl7 import build_oru

        assert "OBR" in build_oru(session, signed.case_id, signed.version)  # sees the uncommitted signature
        seen.append(signed)

    def broken(session, signed: reports.SignedReport) -> None:
        raise RuntimeError("outbox unavailable")

    draft = desk.put({"findings": "Normal.", "impression": "Normal."}, desk.get().headers["ETag"]).json()
    reports.on_signed(broken)
    try:
        with pytest.raises(RuntimeError):
            desk.sign("final", draft["etag"])
    finally:
        reports.remove_signed_hook(broken)
    with desk.rt.db.read_session() as s:  # the failed hook rolled the signature back
        assert s.scalar(select(Report.status).where(Report.case_id == desk.case)) == "draft"
        assert s.get(Case, desk.case).state == "claimed"
    reports.on_signed(outbox)
    try:
        assert desk.sign("final", draft["etag"]).status_code == 200
    finally:
        reports.remove_signed_hook(outbox)
    assert [(x.kind, x.result_status, x.version) for x in seen] == [("final", "F", draft["version"] + 1)]
