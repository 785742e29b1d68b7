"""Canonical procedures: normalisation, site mappings, case classification, routing, CSV import, API authz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import AuditRecord
from readingroom.governance.sites import site_by_code
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.interop import orders, procedures
from readingroom.interop import procedure_mappings as mappings
from readingroom.interop import procedures_csv as pcsv
from readingroom.interop.models import Procedure, ProcedureMapping
from readingroom.workflow import jobs
from readingroom.workflow.cases import case_events, get_case
from readingroom.workflow.rules import RulesError, load_rules
from readingroom.workflow.rulestore import replace_rules
from tests.workflow.conftest import make_case, network  # noqa: F401 - the two-site fixture

HUB = "Riverside University Medical Center"
LKS = "Lakeshore Regional Hospital"
ADMIN = "boss"

RULES = """
version: 2
name: procedure routing
defaults: {mode: pull, pools: [all]}
rules:
  - id: neuro-head-ct
    match: {procedure: [CT-HEAD-WO, ct-head-w]}
    actions: {subspecialty: [neuro]}
"""


def _procedure(s: Any, code: str = "CT-HEAD-WO", name: str = "CT Head without IV contrast") -> Procedure:
    return procedures.create_procedure(s, procedures.ProcedureInput(code, name, "CT", "HEAD", "RPID22", "30799-1"),
                                       actor=ADMIN)


def _map(s: Any, scope: str, value: str, code: str = "CT-HEAD-WO", source: str = "description") -> int:
    return mappings.create_mapping(s, mappings.MappingInput(scope, source, value, code), actor=ADMIN)[1]


def test_normalise_keeps_meaning_and_drops_noise() -> None:
    n = procedures.normalise
    assert n("  ct head, w/o (contrast) ") == "CT HEAD W/O CONTRAST"
    assert n("CT-HEAD_W / O  contrast.") == "CT HEAD W/O CONTRAST"
    assert n("CT HEAD C+") != n("CT HEAD C-") != n("CT HEAD C")
    assert n("ＣＴ　Head") == "CT HEAD"  # full-width characters and spaces (NFKC)
    assert n("...") == ""


def test_loinc_check_digit() -> None:
    assert procedures.loinc_check_ok("30799-1") and procedures.loinc_check_ok("24627-2")
    assert not procedures.loinc_check_ok("30799-2")
    with pytest.raises(procedures.ProcedureError, match="loinc"):
        procedures.ProcedureInput("X", "x", loinc_code="30799-2").cleaned()
    with pytest.raises(procedures.ProcedureError, match="radlex"):
        procedures.ProcedureInput("X", "x", radlex_code="RID22").cleaned()


def test_two_sites_descriptions_map_to_one_code_most_specific_first(network) -> None:  # noqa: F811
    with network.db.session() as s:
        _procedure(s)
        _procedure(s, "CT-HEAD-W", "CT Head with IV contrast")
        assert _map(s, "HUB", "CT HEAD W/O") == 0
        _map(s, "LKS", "Head CT non-contrast")
        _map(s, "*", "CTHD", source="code")
        _map(s, "LKS", "CTHD", "CT-HEAD-W", source="code")
        with pytest.raises(procedures.ProcedureConflict):
            _map(s, "HUB", "ct head w/o.")  # the same value once normalised
        with pytest.raises(procedures.ProcedureError, match="no such site"):
            _map(s, "NOPE", "x")
        with pytest.raises(procedures.ProcedureError, match="no canonical procedure"):
            _map(s, "HUB", "x", "NO-SUCH")
    with network.db.read_session() as s:
        def code(site: str, c: str, d: str) -> str | None:
            found = procedures.resolve(s, site, c, d)
            return found.code if found else None

        assert code("HUB", "", "ct head w/o") == code("LKS", "", "HEAD CT (non-contrast)") == "CT-HEAD-WO"
        assert code("HUB", "", "Head CT non-contrast") is None  # LKS's name, not HUB's
        assert code("HUB", "CTHD", "") == "CT-HEAD-WO"  # the network-wide code mapping
        assert code("LKS", "CTHD", "Head CT non-contrast") == "CT-HEAD-W"  # the site's code outranks all
        assert code("HUB", "", "") is None


def test_case_creation_fills_procedure_code_and_orders_keep_theirs(network, tmp_path: Path) -> None:  # noqa: F811
    with network.db.session() as s:
        _procedure(s)
        _map(s, "HUB", "CT HEAD W/O")
        _map(s, "*", "CTHD", source="code")
    case_id = make_case(network, tmp_path, StudyDescription="CT Head w/o")
    other = make_case(network, tmp_path, StudyDescription="Something unmapped")
    with network.db.session() as s:
        assert get_case(s, case_id).procedure_code == "CT-HEAD-WO"
        assert get_case(s, other).procedure_code == ""
        order = orders.place_order(s, orders.OrderInput(
            placer_order_number="P-1", accession_number="ACC-P1", site_code="LKS", patient_id="PAT-9",
            procedure_code="CTHD", procedure_text="Head CT plain", modality="CT"))
        assert order.procedure_code == "CTHD"  # what the RIS sent stays
        assert order.attrs["canonical_procedure"] == "CT-HEAD-WO"
        assert get_case(s, order.case_id).procedure_code == "CT-HEAD-WO"


def test_routing_rule_matches_canonical_procedure_and_explains(network, tmp_path: Path) -> None:  # noqa: F811
    with network.db.session() as s:
        replace_rules(s, RULES, actor=ADMIN)
        _procedure(s)
        _map(s, "HUB", "CT HEAD W/O")
    head = make_case(network, tmp_path, StudyDescription="CT HEAD W/O")
    other = make_case(network, tmp_path, StudyDescription="CT abdomen")
    with network.db.read_session() as s:
        routed = case_events(s, head)[-1].data
        assert routed["rule"] == "neuro-head-ct" and routed["procedure"] == "CT-HEAD-WO"
        assert routed["eligible"] == ["ann"]  # neuro only; bob reads body
        plain = case_events(s, other)[-1].data
        assert plain["rule"] is None and "procedure" not in plain and sorted(plain["eligible"]) == ["ann", "bob"]
    assert load_rules("version: 1\nname: x\nrules: [{id: a, match: {procedure: CT-HEAD-WO}}]\n").rules[0].match \
        .procedure == ["CT-HEAD-WO"]
    with pytest.raises(RulesError, match="procedure"):
        load_rules("version: 1\nname: x\nrules: [{id: a, match: {procedure: ['']}}]\n")


def test_unmapped_listing_and_reapply_after_mapping(network, tmp_path: Path) -> None:  # noqa: F811
    ids = [make_case(network, tmp_path, StudyDescription=d) for d in ("CT Abdomen", "ct  abdomen.", "MR Knee")]
    lks = make_case(network, tmp_path, institution=LKS, StudyDescription="CT Abdomen")
    with network.db.read_session() as s:
        rows = mappings.unmapped(s)
        assert [(r.site, r.description, r.cases) for r in rows] == [
            ("HUB", "CT ABDOMEN", 2), ("HUB", "MR KNEE", 1), ("LKS", "CT ABDOMEN", 1)]
        assert rows[0].last_seen is not None
        hub_id = get_case(s, ids[0]).site_id
        assert {r.site for r in mappings.unmapped(s, site_ids=[hub_id])} == {"HUB"}
    with network.db.session() as s:
        procedures.create_procedure(s, procedures.ProcedureInput("CT-ABDPEL-W", "CT Abdomen", "CT"), actor=ADMIN)
        assert _map(s, "HUB", "CT ABDOMEN", "CT-ABDPEL-W") == 2  # both HUB variants, not LKS's
    with network.db.read_session() as s:
        assert [get_case(s, i).procedure_code for i in ids] == ["CT-ABDPEL-W", "CT-ABDPEL-W", ""]
        assert get_case(s, lks).procedure_code == ""
        assert [(r.site, r.description) for r in mappings.unmapped(s)] == [("HUB", "MR KNEE"), ("LKS", "CT ABDOMEN")]
    with network.db.session() as s:
        _map(s, "*", "CT abdomen", "CT-ABDPEL-W")
    with network.db.read_session() as s:
        assert get_case(s, lks).procedure_code == "CT-ABDPEL-W"


MAPPINGS_CSV = """scope,source,value,procedure_code
HUB,description,CT HEAD W/O,CT-HEAD-WO
LKS,description,Head CT non-contrast,ct-head-wo
*,code,CTHD,CT-HEAD-WO
"""


def test_csv_import_catalogue_and_mappings(network, tmp_path: Path) -> None:  # noqa: F811
    case_id = make_case(network, tmp_path, institution=LKS, StudyDescription="Head CT (non-contrast)")
    with network.db.session() as s:
        report = pcsv.import_csv(s, pcsv.catalogue_text(), actor=ADMIN)
        assert report.kind == "procedures" and report.counts["created"] >= 30 and not report.errors
        head = procedures.get_procedure(s, "CT-HEAD-WO")
        assert (head.radlex_code, head.loinc_code, head.modality) == ("RPID22", "30799-1", "CT")
    with network.db.session() as s:
        again = pcsv.import_csv(s, pcsv.catalogue_text().replace("RPID24,", "RPID24,\n#x", 1), actor=ADMIN)
        assert again.counts["created"] == 0 and again.counts["skipped"] == report.counts["created"]
        changed = pcsv.import_csv(s, "code,name,modality,body_part,radlex,loinc\n"
                                     "CT-HEAD-W,CT Head with contrast,CT,HEAD,RPID24,\n", actor=ADMIN)
        assert [(r.outcome, r.reason) for r in changed.rows] == [("updated", "changed name")]
    with network.db.session() as s:
        report = pcsv.import_csv(s, MAPPINGS_CSV, actor=ADMIN)
        assert report.counts == {"created": 3, "updated": 0, "skipped": 0, "error": 0}
        assert report.cases_classified == 1
    with network.db.session() as s:
        assert get_case(s, case_id).procedure_code == "CT-HEAD-WO"
        again = pcsv.import_csv(s, MAPPINGS_CSV.replace("*,code,CTHD,CT-HEAD-WO", "*,code,CTHD,CT-HEAD-W"),
                                actor=ADMIN)
        assert [r.outcome for r in again.rows] == ["skipped", "skipped", "updated"]
        actions = set(s.scalars(select(AuditRecord.action).where(AuditRecord.action.like("procedure%"))))
        assert {"procedure_procedures.imported", "procedure_mappings.imported"} <= actions


def test_csv_bad_rows_reject_the_whole_file(network) -> None:  # noqa: F811
    with network.db.session() as s:
        _procedure(s)
    bad = ("scope,source,value,procedure_code\n"
           "HUB,description,Fine row,CT-HEAD-WO\n"
           "HUB,description,Unknown procedure,NOPE\n"
           "# a comment\n"
           "NOSITE,code,X1,CT-HEAD-WO\n"
           "HUB,diagnosis,X2,CT-HEAD-WO\n"
           "HUB,description,fine ROW.,CT-HEAD-WO\n"
           "HUB,description,too,many,fields\n")
    with network.db.session() as s, pytest.raises(pcsv.ImportRejected) as caught:
        pcsv.import_csv(s, bad, actor=ADMIN)
    errors = {r.line: r.reason for r in caught.value.report.errors}
    assert set(errors) == {8}  # the shape of every line is checked first
    with network.db.session() as s, pytest.raises(pcsv.ImportRejected) as caught:
        pcsv.import_csv(s, bad.rsplit("HUB,description,too", 1)[0], actor=ADMIN)
    errors = {r.line: r.reason for r in caught.value.report.errors}
    assert set(errors) == {3, 5, 6, 7}
    assert "NOPE" in errors[3] and "no such site" in errors[5] and "source" in errors[6] and "line 2" in errors[7]
    assert "line 3" in str(caught.value) and not caught.value.forbidden
    with network.db.read_session() as s:  # the good row was not applied either
        assert s.scalar(select(func.count()).select_from(ProcedureMapping)) == 0
    for text, why in (("", "no header"), ("a,b\n1,2\n", "neither"), ("code,name,modality,body_part,radlex,loinc\n"
                                                                     "X,,CT,,,\n", "name")):
        with network.db.session() as s, pytest.raises(pcsv.ImportRejected, match=why):
            pcsv.import_csv(s, text, actor=ADMIN)
    with network.db.session() as s, pytest.raises(pcsv.ImportRejected, match="network administrators"):
        pcsv.import_csv(s, pcsv.catalogue_text(), actor="site", allowed=frozenset({"HUB"}))


# -- the HTTP API ---------------------------------------------------------------------------------------------


@pytest.fixture()
def api(network):  # noqa: F811
    forget_cached_credentials()
    with network.db.session() as s:
        create_user(s, "lksadmin", password="pw", role="site_admin", site_id=site_by_code(s, "LKS").id)
        headers = {name: {"Authorization": f"Bearer {create_token(s, get_user(s, name))[1]}"}
                   for name in ("ann", "boss", "lksadmin")}
    client = TestClient(create_app(network))
    client.h = headers  # type: ignore[attr-defined]
    return client


def test_api_procedures_crud_and_authz(api, network) -> None:  # noqa: F811
    h = api.h
    body = {"code": "ct-head-wo", "name": "CT Head wo", "modality": "CT", "body_part": "HEAD", "radlex_code": "RPID22"}
    assert api.post("/api/v1/procedures", json=body).status_code == 401
    assert api.post("/api/v1/procedures", json=body, headers=h["ann"]).status_code == 403
    assert api.post("/api/v1/procedures", json=body, headers=h["lksadmin"]).status_code == 403
    r = api.post("/api/v1/procedures", json=body, headers=h["boss"])
    assert r.status_code == 201 and r.json()["code"] == "CT-HEAD-WO"
    assert api.post("/api/v1/procedures", json=body, headers=h["boss"]).status_code == 409
    bad = api.post("/api/v1/procedures", json={**body, "code": "X", "loinc_code": "123-4"}, headers=h["boss"])
    assert bad.status_code == 422 and "loinc" in bad.json()["detail"]
    assert [p["code"] for p in api.get("/api/v1/procedures", headers=h["ann"]).json()] == ["CT-HEAD-WO"]
    assert api.get("/api/v1/procedures?q=head", headers=h["ann"]).json()[0]["radlex_code"] == "RPID22"
    assert api.get("/api/v1/procedures/ct-head-wo", headers=h["ann"]).status_code == 200
    assert api.get("/api/v1/procedures/NOPE", headers=h["ann"]).status_code == 404
    change = {k: v for k, v in body.items() if k != "code"} | {"name": "CT Head without contrast"}
    assert api.put("/api/v1/procedures/CT-HEAD-WO", json=change, headers=h["lksadmin"]).status_code == 403
    r = api.put("/api/v1/procedures/CT-HEAD-WO", json=change, headers=h["boss"])
    assert r.status_code == 200 and r.json()["name"] == "CT Head without contrast"
    assert api.delete("/api/v1/procedures/CT-HEAD-WO", headers=h["ann"]).status_code == 403
    assert api.delete("/api/v1/procedures/CT-HEAD-WO", headers=h["boss"]).status_code == 204
    assert api.get("/api/v1/procedures/CT-HEAD-WO", headers=h["ann"]).status_code == 404


def test_api_mappings_scoped_to_site_admins_sites(api, network, tmp_path: Path) -> None:  # noqa: F811
    h = api.h
    with network.db.session() as s:
        _procedure(s)
    make_case(network, tmp_path, institution=LKS, StudyDescription="Head CT plain")
    make_case(network, tmp_path, StudyDescription="Hub only description")
    m = {"scope": "LKS", "source": "description", "value": "head ct PLAIN", "procedure_code": "CT-HEAD-WO"}
    assert api.post("/api/v1/procedure-mappings", json=m, headers=h["ann"]).status_code == 403
    unmapped = api.get("/api/v1/procedure-mappings/unmapped", headers=h["lksadmin"]).json()
    assert [(u["site"], u["description"], u["cases"]) for u in unmapped] == [("LKS", "HEAD CT PLAIN", 1)]
    assert len(api.get("/api/v1/procedure-mappings/unmapped", headers=h["boss"]).json()) == 2
    for scope in ("HUB", "*"):
        r = api.post("/api/v1/procedure-mappings", json={**m, "scope": scope}, headers=h["lksadmin"])
        assert r.status_code == 403, r.text
    r = api.post("/api/v1/procedure-mappings", json=m, headers=h["lksadmin"])
    assert r.status_code == 201 and r.json()["cases_classified"] == 1 and r.json()["value"] == "HEAD CT PLAIN"
    own = r.json()["id"]
    assert api.post("/api/v1/procedure-mappings", json=m, headers=h["lksadmin"]).status_code == 409
    hub = api.post("/api/v1/procedure-mappings", json={**m, "scope": "HUB"}, headers=h["boss"]).json()["id"]
    star = api.post("/api/v1/procedure-mappings", json={**m, "scope": "*"}, headers=h["boss"]).json()["id"]
    assert {x["id"] for x in api.get("/api/v1/procedure-mappings", headers=h["lksadmin"]).json()} == {own, star}
    assert len(api.get("/api/v1/procedure-mappings", headers=h["boss"]).json()) == 3
    assert api.delete(f"/api/v1/procedure-mappings/{hub}", headers=h["lksadmin"]).status_code == 404
    assert api.delete(f"/api/v1/procedure-mappings/{star}", headers=h["lksadmin"]).status_code == 403
    assert api.delete(f"/api/v1/procedure-mappings/{own}", headers=h["lksadmin"]).status_code == 204
    assert api.get("/api/v1/procedure-mappings/unmapped", headers=h["lksadmin"]).json() == []


def test_api_import(api, network) -> None:  # noqa: F811
    h = api.h
    csv = {"Content-Type": "text/csv"}
    r = api.post("/api/v1/procedure-mappings/import", content=pcsv.catalogue_text(), headers={**h["boss"], **csv})
    assert r.status_code == 200 and r.json()["kind"] == "procedures" and r.json()["counts"]["created"] >= 30
    lks_only = "scope,source,value,procedure_code\nLKS,description,Head CT plain,CT-HEAD-WO\n"
    r = api.post("/api/v1/procedure-mappings/import", content=lks_only, headers={**h["lksadmin"], **csv})
    assert r.status_code == 200 and r.json()["rows"][0]["outcome"] == "created"
    both = lks_only + "HUB,description,Head CT plain,CT-HEAD-WO\n"
    r = api.post("/api/v1/procedure-mappings/import", content=both, headers={**h["lksadmin"], **csv})
    assert r.status_code == 403 and r.json()["detail"]["rows"][0]["line"] == 3
    bad = lks_only.replace("CT-HEAD-WO", "NOPE")
    r = api.post("/api/v1/procedure-mappings/import", content=bad, headers={**h["boss"], **csv})
    assert r.status_code == 400
    assert r.json()["detail"]["rows"] == [{"line": 2, "key": "LKS description Head CT plain", "outcome": "error",
                                          "reason": "no canonical procedure 'NOPE'"}]
    assert "nothing imported" in r.json()["detail"]["message"]
    r = api.post("/api/v1/procedure-mappings/import", content=b"\xff\xfe", headers={**h["boss"], **csv})
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]["message"]
    assert api.post("/api/v1/procedure-mappings/import", content=lks_only,
                    headers={**h["boss"], "Content-Type": "application/json"}).status_code == 415
    assert api.post("/api/v1/procedure-mappings/import", content=lks_only,
                    headers={**h["ann"], **csv}).status_code == 403
    network.settings.procedures_import_max_bytes = 10
    r = api.post("/api/v1/procedure-mappings/import", content=lks_only, headers={**h["boss"], **csv})
    assert r.status_code == 413
    with network.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ProcedureMapping)) == 1


def test_cli_import_and_unmapped(network, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from readingroom.cli import app

    data_dir = str(network.settings.data_dir)
    # The CLI opens the same database as the test (PostgreSQL when READINGROOM_TEST_DATABASE_URL is set).
    runner = CliRunner(env={"READINGROOM_DATABASE_URL": network.settings.database_url or ""})
    result = runner.invoke(app, ["procedures", "import", "--catalogue", "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("scope,source,value,procedure_code\nHUB,description,x,NOPE\n")
    result = runner.invoke(app, ["procedures", "import", str(bad), "--data-dir", data_dir])
    assert result.exit_code == 1 and "nothing imported" in result.output
    make_case(network, tmp_path, StudyDescription="Never mapped")
    result = runner.invoke(app, ["procedures", "unmapped", "--data-dir", data_dir])
    assert result.exit_code == 0 and "NEVER MAPPED" in result.output
    assert jobs.intake(network) == []
