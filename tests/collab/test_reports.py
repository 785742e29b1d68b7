"""Reports: templates, drafts with If-Match, signatures, immutable finals, addenda, history, who may do what."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from readingroom.clock import utcnow
from readingroom.collab.reports_models import Report, ReportVersion
from readingroom.governance import audit, policy
from readingroom.governance.models import AccessGrant, AuditRecord
from readingroom.governance.users import get_user
from readingroom.workflow.models import Case, CaseEvent
from tests.collab.report_fixtures import Desk, clock, make_desk  # noqa: F401  (fixture)
from tests.workflow.conftest import network  # noqa: F401  (fixture)

FINDINGS = "Small chronic lacunar infarct in the left basal ganglia."
IMPRESSION = "No acute intracranial abnormality."


@pytest.fixture()
def desk(network, tmp_path: Path, clock) -> Desk:  # noqa: F811
    return make_desk(network, tmp_path, clock)


def _stored(desk: Desk) -> tuple[int | None, str | None, int, str]:
    """(report version, status, number of versions, case state): what a refused write must leave alone."""
    with desk.rt.db.read_session() as s:
        report = s.scalar(select(Report).where(Report.case_id == desk.case))
        count = s.scalar(select(func.count()).select_from(ReportVersion))
        state = s.get(Case, desk.case).state
    return (report.version if report else None, report.status if report else None, count, state)


def _events(desk: Desk) -> list[str]:
    with desk.rt.db.read_session() as s:
        return list(s.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == desk.case,
                                                           CaseEvent.kind.like("report.%")).order_by(CaseEvent.id)))


def _draft(desk: Desk, **sections: str) -> dict:
    start = desk.get()
    r = desk.put({"findings": FINDINGS, "impression": IMPRESSION, **sections}, start.headers["ETag"])
    assert r.status_code == 200, r.text
    return r.json()


# -- templates -------------------------------------------------------------------------------------------------


def test_templates_are_filtered_and_the_case_gets_the_most_specific(desk: Desk) -> None:
    listed = desk.c.get("/api/v1/report-templates", params={"modality": "CT", "body_part": "head"},
                        headers=desk.h["ann"]).json()
    assert [t["id"] for t in listed] == ["ct-head", "generic"]
    head = listed[0]
    assert head["sections"][0]["id"] == "clinical_information"
    assert {"absent", "present"} <= set(next(s for s in head["sections"] if s["id"] == "haemorrhage")["options"])
    assert [t["id"] for t in desk.c.get("/api/v1/report-templates", params={"modality": "MR"},
                                        headers=desk.h["ann"]).json()] == ["mr-brain", "generic"]
    assert desk.c.get(f"/api/v1/cases/{desk.case}/report-template", headers=desk.h["ann"]).json()["id"] == "ct-head"
    empty = desk.get()
    assert empty.status_code == 200
    assert empty.json()["status"] == "none" and empty.json()["version"] == 0
    assert empty.json()["template_id"] == "ct-head"
    assert empty.json()["sections"]["technique"].startswith("Axial CT of the head")
    assert empty.headers["ETag"] == f'"report-{desk.case}-v0"'


# -- drafts and optimistic concurrency --------------------------------------------------------------------------


def test_writes_need_if_match_and_bad_documents_change_nothing(desk: Desk) -> None:
    etag = desk.get().headers["ETag"]
    before = _stored(desk)
    assert desk.put({"findings": "x"}, None).status_code == 428
    assert desk.put({"findings": "x"}, "*").status_code == 428
    bad_pick = desk.put({"haemorrhage": "maybe"}, etag)
    assert bad_pick.status_code == 422 and "must be one of" in bad_pick.text
    unknown = desk.put({"histology": "x"}, etag)
    assert unknown.status_code == 422 and "unknown section 'histology'" in unknown.text
    assert desk.put({"findings": "x"}, etag, template_id="no-such").status_code == 422
    assert desk.sign("final", etag).status_code == 409  # nothing to sign yet
    assert _stored(desk) == before == (None, None, 0, "claimed")


def test_first_draft_expands_macros_and_logs_one_drafted_event(desk: Desk) -> None:
    r = desk.put({"findings": ".normal", "impression": ".normal", "comparison": ".nocomp",
                  "clinical_information": "Fall. GCS 15. Ref .5 mm e.g. .unknown"}, desk.get().headers["ETag"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["ETag"] == body["etag"] == f'"report-{desk.case}-v1"'
    assert body["status"] == "draft" and body["version"] == 1
    assert body["sections"]["findings"].startswith("No intracranial haemorrhage")
    assert body["sections"]["impression"] == "No acute intracranial abnormality."
    assert body["sections"]["comparison"] == "No prior imaging available for comparison."
    assert body["sections"]["clinical_information"] == "Fall. GCS 15. Ref .5 mm e.g. .unknown"
    desk.tick()
    again = desk.put({"findings": FINDINGS, "impression": IMPRESSION}, body["etag"])
    assert again.status_code == 200 and again.json()["version"] == 2
    assert _events(desk) == ["report.drafted"]  # autosaves are versions, not case events


def test_stale_writer_gets_412_with_the_newer_text_and_nothing_is_lost(desk: Desk) -> None:
    base = _draft(desk)["etag"]
    first = desk.put({"findings": FINDINGS + " Writer one.", "impression": IMPRESSION}, base)
    assert first.status_code == 200
    second = desk.put({"findings": FINDINGS + " Writer two.", "impression": IMPRESSION}, base)
    assert second.status_code == 412
    current = second.json()["detail"]["current"]
    assert current["sections"]["findings"].endswith("Writer one.")
    assert second.headers["ETag"] == current["etag"] == first.json()["etag"]
    merged = desk.put({"findings": FINDINGS + " Writer one. Writer two.", "impression": IMPRESSION},
                      current["etag"])
    assert merged.status_code == 200 and merged.json()["version"] == 3
    history = desk.get(suffix="/versions").json()
    assert [v["number"] for v in history] == [1, 2, 3]
    texts = [desk.get(params={"version": n}).json()["sections"]["findings"] for n in (2, 3)]
    assert texts == [FINDINGS + " Writer one.", FINDINGS + " Writer one. Writer two."]
    # A tag of another case's report, or garbage, is stale too (never a blind write).
    assert desk.put({"findings": "x"}, '"report-999-v4"').status_code == 412
    assert _stored(desk)[0] == 3


def test_final_completes_the_case_and_can_never_change(desk: Desk) -> None:
    prelim = desk.sign("preliminary", _draft(desk)["etag"])
    assert prelim.status_code == 200, prelim.text
    assert prelim.json()["status"] == "preliminary"
    edited = desk.put({"findings": FINDINGS + " Also mild small-vessel disease.", "impression": IMPRESSION},
                      prelim.json()["etag"])
    assert edited.status_code == 200 and edited.json()["status"] == "draft"
    final = desk.sign("final", edited.json()["etag"])
    assert final.status_code == 200, final.text
    assert final.json()["status"] == "final" and final.json()["signer"] == "Ann Reader, MD"
    assert _events(desk) == ["report.drafted", "report.preliminary", "report.drafted", "report.final"]
    frozen = _stored(desk)
    assert frozen[1:] == ("final", 4, "final")
    etag = final.json()["etag"]
    assert desk.put({"findings": "rewritten"}, etag).status_code == 409
    assert desk.sign("final", etag).status_code == 409
    assert desk.sign("preliminary", etag).status_code == 409
    assert desk.c.post(f"/api/v1/cases/{desk.case}/complete", headers=desk.h["ann"]).status_code == 409
    assert _stored(desk) == frozen
    with desk.rt.db.read_session() as s:
        signed = s.scalars(select(ReportVersion).where(ReportVersion.kind == "final")).one()
        assert signed.sections["findings"].endswith("small-vessel disease.")
        assert signed.signed_by == "ann"


def test_an_addendum_is_a_new_signed_version_and_keeps_the_final(desk: Desk) -> None:
    final = desk.sign("final", _draft(desk)["etag"]).json()
    assert desk.addendum("Compared with outside MRI: unchanged.", None).status_code == 428
    added = desk.addendum("Compared with outside MRI: unchanged.", final["etag"])
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["status"] == "addended" and body["version"] == final["version"] + 1
    assert body["sections"] == final["sections"]
    assert [a["text"] for a in body["addenda"]] == ["Compared with outside MRI: unchanged."]
    at_final = desk.get(params={"version": final["version"]}).json()
    assert at_final["status"] == "final" and at_final["addenda"] == []
    assert desk.addendum("Late second look.", final["etag"]).status_code == 412  # stale
    assert desk.addendum("   ", body["etag"]).status_code == 422
    second = desk.addendum("Discussed with Dr Hartmann.", body["etag"])
    assert second.status_code == 201 and len(second.json()["addenda"]) == 2
    assert _events(desk)[-3:] == ["report.final", "report.addended", "report.addended"]
    with desk.rt.db.read_session() as s:
        assert s.get(Case, desk.case).state == "final"


def test_diff_between_versions_is_per_section(desk: Desk) -> None:
    v1 = _draft(desk)
    desk.put({"findings": FINDINGS + "\nNew line about sinuses.", "impression": IMPRESSION}, v1["etag"])
    diff = desk.get(suffix="/diff").json()
    assert (diff["from_version"], diff["to_version"]) == (1, 2)
    by_id = {d["id"]: d for d in diff["sections"]}
    assert by_id["findings"]["changed"] and "+New line about sinuses." in by_id["findings"]["lines"]
    assert not by_id["impression"]["changed"] and by_id["impression"]["lines"] == []
    assert desk.get(suffix="/diff", params={"from": 2, "to": 1}).json()["sections"][0]["id"]
    assert desk.get(suffix="/diff", params={"from": 1, "to": 9}).status_code == 404


# -- who may do what ------------------------------------------------------------------------------------------


def test_only_the_claiming_reader_writes_and_signs(desk: Desk) -> None:
    etag = _draft(desk)["etag"]
    before = _stored(desk)
    bob = desk.put({"findings": "bob was here"}, etag, who="bob")  # a candidate who did not claim
    assert bob.status_code == 403 and "claimed" in bob.text
    assert desk.sign("final", etag, who="bob").status_code == 403
    assert desk.sign("final", etag, who="boss").status_code == 403  # admins do not sign reports
    assert desk.put({"findings": "x"}, etag, who="ref").status_code == 403
    assert desk.sign("final", etag, who="cat").status_code in (403, 404)  # no relationship to the case
    assert _stored(desk) == before
    r = desk.c.post(f"/api/v1/cases/{desk.case}/release", headers=desk.h["ann"])
    assert r.status_code == 200
    assert desk.sign("final", etag).status_code == 403  # released: no longer the case's reader
    assert _stored(desk)[:3] == before[:3]


def test_complete_is_refused_while_a_report_is_unsigned(desk: Desk) -> None:
    _draft(desk)
    r = desk.c.post(f"/api/v1/cases/{desk.case}/complete", headers=desk.h["ann"])
    assert r.status_code == 409 and "sign it final" in r.text
    assert _stored(desk)[3] == "claimed"


def test_people_who_do_not_write_reports_read_signed_versions_only(desk: Desk) -> None:
    draft = _draft(desk)
    assert desk.get("ref").json()["status"] == "none"  # the ordering clinician sees no draft
    assert desk.get("ref", params={"version": 1}).status_code == 404
    assert desk.get("ref", "/fhir").status_code == 409
    prelim = desk.sign("preliminary", draft["etag"]).json()
    desk.put({"findings": "draft after preliminary", "impression": IMPRESSION}, prelim["etag"])
    seen = desk.get("ref").json()
    assert seen["status"] == "preliminary" and seen["view"] == "signed" and seen["version"] == prelim["version"]
    assert [v["kind"] for v in desk.get("ref", "/versions").json()] == ["preliminary"]
    assert desk.get("ann").json()["sections"]["findings"] == "draft after preliminary"
    assert desk.get("tech").json()["status"] == "preliminary"  # the site's technologist can see the case


def test_someone_without_access_to_the_case_gets_403_or_404(desk: Desk) -> None:
    desk.sign("final", _draft(desk)["etag"])
    for suffix in ("", "/versions", "/diff", "/fhir", "/hl7", "/html", "/pdf"):
        assert desk.get("nosy", suffix).status_code == 403, suffix
        assert desk.get("cat", suffix).status_code == 403, suffix
    assert desk.c.get(f"/api/v1/cases/{desk.case}/report-template", headers=desk.h["nosy"]).status_code == 403
    assert desk.c.get("/api/v1/cases/987654/report", headers=desk.h["ann"]).status_code == 404
    # A consult grant opens the report to the consultant (the policy honours grants everywhere).
    with desk.rt.db.session() as s:
        s.add(AccessGrant(user_id=get_user(s, "nosy").id, kind="consult", case_id=desk.case, study_uid="",
                          include_priors=False, reason="test", granted_by="ann", created_at=utcnow()))
    policy.forget_decisions()
    assert desk.get("nosy").json()["status"] == "final"


def test_reading_a_report_is_audited(desk: Desk) -> None:
    desk.sign("final", _draft(desk)["etag"])
    for suffix in ("", "/pdf", "/fhir"):
        assert desk.get("ref", suffix).status_code == 200
    audit.flush(desk.rt.db)
    with desk.rt.db.read_session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.action == "report.read",
                                                   AuditRecord.actor == "ref")).all()
        signed = s.scalars(select(AuditRecord).where(AuditRecord.action == "case.report.final")).all()
    assert sorted(r.detail["format"] for r in rows) == ["fhir", "json", "pdf"]
    assert {r.patient_id for r in rows} == {"P-REPORT"}
    assert len(signed) == 1 and signed[0].actor == "ann"
