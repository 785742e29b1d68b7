"""Share links end to end in process: creation rules, public pages, denials and their audit records."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from readingroom.app import create_app
from readingroom.archive.ingest import ingest_path
from readingroom.clock import utcnow
from readingroom.demo.synth import DEMO_SITES, StudySpec, write_study
from readingroom.governance import audit, policy
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.deidentify import Deidentifier
from readingroom.governance.models import AccessGrant, AuditRecord, ShareLink
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user

BASE = "https://testserver"  # the share cookies are Secure, as in production


class World:
    """One study at a site with a residency tag, the people around it and an app.

    ``rad`` reads the study through a consult grant (a relationship the policy honours), ``outsider``
    is a radiologist with none, ``tech`` may read but not share, ``root`` administers.
    """

    def __init__(self, rt, tmp_path: Path) -> None:
        forget_cached_credentials()
        policy.forget_decisions()
        self.rt = rt
        with rt.db.session() as s:
            site = create_site(s, "STB", "St. Brigid Community Hospital", residency_tag="eu-ie")
            other = create_site(s, "LKS", "Lakeshore Regional Hospital")
            self.tokens = {}
            for name, role, site_id in (("rad", "radiologist", site.id), ("outsider", "radiologist", other.id),
                                        ("tech", "technologist", site.id), ("root", "admin", None)):
                user = create_user(s, name, password="pw-" + name, role=role, site_id=site_id)
                self.tokens[name] = create_token(s, user)[1]
                if name == "rad":
                    rad_id = user.id
            site_id = site.id
        spec = StudySpec("CT", 2, 2, DEMO_SITES[1], 4, 1, "STB77001")
        self.paths = write_study(spec, 5, tmp_path / "in")
        for path in self.paths:
            assert ingest_path(rt, path, actor="test", site_id=site_id).ok
        self.originals = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in self.paths}
        first = pydicom.dcmread(self.paths[0])
        self.study_uid, self.patient_name = str(first.StudyInstanceUID), str(first.PatientName)
        with rt.db.session() as s:
            s.add(AccessGrant(user_id=rad_id, kind="consult", study_uid=self.study_uid, reason="second opinion",
                              granted_by="test", created_at=utcnow()))
        self.description = str(first.StudyDescription)
        self.app = create_app(rt)

    def client(self, who: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return TestClient(self.app, base_url=BASE, headers=headers)

    def share(self, who: str = "rad", expect: int = 201, **body: object) -> dict:
        payload = {"study_uid": self.study_uid, "recipient": "dr.kim@partner.example", "recipient_region": "eu-ie",
                   **body}
        r = self.client(who).post("/api/v1/shares", json=payload)
        assert r.status_code == expect, r.text
        return r.json()

    def audit(self, action: str, outcome: str | None = None) -> list[AuditRecord]:
        audit.flush(self.rt.db)
        with self.rt.db.read_session() as s:
            q = select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id)
            if outcome:
                q = q.where(AuditRecord.outcome == outcome)
            return list(s.scalars(q).all())


@pytest.fixture()
def world(rt, tmp_path) -> World:
    return World(rt, tmp_path)


def path_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1].join(["/", ""])


def test_create_returns_the_secret_once_and_stores_only_its_hash(world) -> None:
    created = world.share(mode="view")
    assert created["url"].endswith("/share/" + created["token"]) and created["token"].startswith("rs_")
    with world.rt.db.read_session() as s:
        row = s.get(ShareLink, created["id"])
        assert row.token_hash == hashlib.sha256(created["token"].encode()).hexdigest()
        assert created["token"] not in (row.token_hash, row.prefix, row.uid_salt)
    listed = world.client("rad").get("/api/v1/shares").json()
    assert [s["id"] for s in listed] == [created["id"]] and "token" not in listed[0] and "url" not in listed[0]
    assert world.client("outsider").get("/api/v1/shares").json() == []
    assert [s["id"] for s in world.client("root").get(f"/api/v1/shares?study_uid={world.study_uid}").json()] == \
        [created["id"]]
    (record,) = world.audit("share.create", "success")
    assert record.actor == "rad" and record.resource_id == world.study_uid and record.detail["mode"] == "view"


def test_creation_rules(world) -> None:
    assert world.share("tech", expect=403)  # technologists may not share
    refused = world.share("outsider", expect=404)  # no relationship to the study: not even its existence
    assert "not readable" in refused["detail"]
    assert "share_max_days" in world.share(expires_in_hours=24 * 31, expect=422)["detail"]
    assert world.share(expires_in_hours=0, expect=422)
    assert "mode" in world.share(mode="edit", expect=422)["detail"]
    assert world.share(max_accesses=0, expect=422)
    assert "passcode" in world.share(passcode="123", expect=422)["detail"]
    assert world.share(study_uid="1.2.3.4", expect=404)
    failures = world.audit("share.create", "failure")
    assert len(failures) == 8 and all(r.reason for r in failures)


def test_residency_keeps_identified_studies_in_region(world) -> None:
    refused = world.share(recipient_region="us-east", expect=403)
    assert "residency" in refused["detail"] and "eu-ie" in refused["detail"]
    assert world.share(recipient_region="", expect=403)
    world.share(recipient_region="eu-ie")
    world.share(recipient_region="us-east", deidentify=True)  # allowed by share_deidentified_crosses_residency
    world.rt.settings.share_deidentified_crosses_residency = False
    assert "residency" in world.share(recipient_region="us-east", deidentify=True, expect=403)["detail"]
    denials = [r for r in world.audit("share.create", "failure") if "residency" in r.reason]
    assert len(denials) == 3 and denials[0].detail["recipient_region"] == "us-east"


def test_view_share_shows_the_study_but_never_the_files(world) -> None:
    created = world.share(mode="view")
    web = world.client()
    page = web.get(path_of(created["url"]), headers={"Accept": "text/html"})
    assert page.status_code == 200 and world.description in page.text
    assert world.patient_name.split("^")[0] in page.text and "View only" in page.text
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    manifest = web.get(path_of(created["url"]) + "/manifest").json()
    assert manifest["download"] is None and manifest["study"]["uid"] == world.study_uid
    series = manifest["series"]
    assert len(series) == 2 and sum(len(s["instances"]) for s in series) == 4
    thumb = web.get(path_of(created["url"]) + "/" + series[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG")
    image = web.get(path_of(created["url"]) + "/" + series[1]["instances"][0]["rendered"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    windowed = web.get(path_of(created["url"]) + "/" + series[1]["instances"][0]["rendered"][0] + "?window=0,100")
    assert windowed.status_code == 200 and windowed.content != image.content
    bad = web.get(path_of(created["url"]) + "/" + series[1]["instances"][0]["rendered"][0] + "?window=abc")
    assert bad.status_code == 400 and "window" in bad.json()["detail"]
    assert web.get(path_of(created["url"]) + f"/instances/{series[0]['instances'][0]['uid']}/frames/2/rendered"
                   ).status_code == 404
    download = web.get(path_of(created["url"]) + "/download")
    assert download.status_code == 403 and "view-only" in download.json()["detail"]
    assert web.get(path_of(created["url"]) + "/instances/1.2.3/thumbnail").status_code == 404
    # one visit: the page, its manifest and images count once
    with world.rt.db.read_session() as s:
        row = s.get(ShareLink, created["id"])
        assert row.access_count == 1 and row.last_access_at is not None
    (opened,) = world.audit("share.open")
    assert opened.actor == "share:" + created["token"][:10] and opened.outcome == "success"
    assert opened.source and opened.patient_id
    assert len(world.audit("share.view")) == 3
    (denied,) = world.audit("share.download", "failure")
    assert "view-only" in denied.reason


def test_download_streams_the_original_files(world) -> None:
    created = world.share(mode="download")
    r = world.client().get(path_of(created["url"]) + "/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".dcm"))
        assert len(names) == 4 and "manifest.json" in zf.namelist()
        files = {str(pydicom.dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID): zf.read(n) for n in names}
    assert files == world.originals  # byte for byte
    (record,) = world.audit("share.download", "success")
    assert record.detail["instances"] == 4


def test_deidentified_share_is_consistent_and_different_per_share(world) -> None:
    first, second = world.share(mode="download", deidentify=True), world.share(mode="download", deidentify=True)
    web = world.client()
    manifest = web.get(path_of(first["url"]) + "/manifest").json()
    assert manifest["deidentified"] and "patient" not in manifest["study"]
    assert manifest["study"]["uid"] != world.study_uid and manifest["study"]["description"] == ""
    page = web.get(path_of(first["url"])).text
    assert world.patient_name.split("^")[0] not in page and world.description not in page
    listed = {i["uid"]: s["uid"] for s in manifest["series"] for i in s["instances"]}
    with zipfile.ZipFile(io.BytesIO(web.get(path_of(first["url"]) + "/download").content)) as zf:
        files = [pydicom.dcmread(io.BytesIO(zf.read(n))) for n in zf.namelist() if n.endswith(".dcm")]
    assert {str(f.SOPInstanceUID): str(f.SeriesInstanceUID) for f in files} == listed
    assert {str(f.StudyInstanceUID) for f in files} == {manifest["study"]["uid"]}
    for f in files:
        assert f.PatientIdentityRemoved == "YES" and f.PatientName == "" and "InstitutionAddress" not in f
        original = pydicom.dcmread(io.BytesIO(next(
            raw for uid, raw in world.originals.items()
            if Deidentifier(_salt(world, first["id"])).uid(uid) == f.SOPInstanceUID)))
        assert f.PixelData == original.PixelData
    other = web.get(path_of(second["url"]) + "/manifest").json()
    other_uids = {i["uid"] for s in other["series"] for i in s["instances"]} | {other["study"]["uid"]}
    assert not other_uids & (set(listed) | {manifest["study"]["uid"]})
    # images are addressed by the share's UIDs only
    some = next(iter(listed))
    assert web.get(path_of(first["url"]) + f"/instances/{some}/frames/1/rendered").status_code == 200
    original_uid = next(iter(world.originals))
    assert web.get(path_of(first["url"]) + f"/instances/{original_uid}/thumbnail").status_code == 404


def _salt(world: World, share_id: int) -> str:
    with world.rt.db.read_session() as s:
        return s.get(ShareLink, share_id).uid_salt


def test_max_accesses_counts_visits_and_then_refuses(world) -> None:
    created = world.share(max_accesses=2)
    link = path_of(created["url"])
    a, b, c = world.client(), world.client(), world.client()
    assert a.get(link).status_code == 200
    assert a.get(link + "/manifest").status_code == 200  # same visit (cookie): not counted again
    assert b.get(link + "/manifest").status_code == 200
    refused = c.get(link + "/manifest")
    assert refused.status_code == 410 and "maximum" in refused.json()["detail"]
    assert a.get(link + "/manifest").status_code == 200  # a visit under way may finish
    with world.rt.db.read_session() as s:
        assert s.get(ShareLink, created["id"]).access_count == 2
    assert len(world.audit("share.open", "success")) == 2
    (denied,) = world.audit("share.manifest", "failure")
    assert "maximum" in denied.reason and denied.actor == "share:" + created["token"][:10]
    assert world.client("rad").get("/api/v1/shares").json()[0]["status"] == "used_up"


def test_expired_and_unknown_links_are_refused_and_audited(world) -> None:
    created = world.share()
    with world.rt.db.session() as s:
        s.execute(update(ShareLink).where(ShareLink.id == created["id"])
                  .values(expires_at=utcnow() - timedelta(minutes=1)))
    r = world.client().get(path_of(created["url"]), headers={"Accept": "text/html"})
    assert r.status_code == 410 and "expired" in r.text
    unknown = world.client().get("/share/rs_" + "x" * 43 + "/manifest")
    assert unknown.status_code == 404
    assert world.client().get("/share/not-a-share/manifest").status_code == 404
    denials = world.audit("share.page", "failure") + world.audit("share.manifest", "failure")
    assert sorted(d.reason for d in denials) == ["this share link has expired", "unknown share link",
                                                 "unknown share link"]
    assert all("x" * 20 not in (d.actor + d.resource_id) for d in denials)  # only the prefix is kept


def test_revocation_is_immediate(world) -> None:
    created = world.share()
    web = world.client()
    link = path_of(created["url"])
    manifest = web.get(link + "/manifest").json()
    thumb = link + "/" + manifest["series"][0]["thumbnail"]
    assert web.get(thumb).status_code == 200
    assert world.client("outsider").delete(f"/api/v1/shares/{created['id']}").status_code == 403
    assert world.client("rad").delete(f"/api/v1/shares/{created['id']}").json()["status"] == "revoked"
    assert world.client("rad").delete(f"/api/v1/shares/{created['id']}").status_code == 409
    assert world.client("root").delete("/api/v1/shares/9999").status_code == 404
    after = web.get(thumb)  # same visit cookie, next request
    assert after.status_code == 410 and "revoked" in after.json()["detail"]
    assert len(world.audit("share.revoke", "success")) == 1
    assert len(world.audit("share.revoke", "failure")) == 3
    assert world.audit("share.image", "failure")[0].reason == "this share link was revoked"


def test_passcode_unlocks_and_wrong_ones_lock_the_link(world) -> None:
    world.rt.settings.share_passcode_attempts = 3
    created = world.share(passcode="correct horse")
    link = path_of(created["url"])
    web = world.client()
    asked = web.get(link, headers={"Accept": "text/html"})
    assert asked.status_code == 401 and 'name="passcode"' in asked.text
    assert web.get(link + "/manifest").status_code == 401
    wrong = web.post(link + "/unlock", json={"passcode": "battery staple"})
    assert wrong.status_code == 403 and "2 attempt" in wrong.json()["detail"]
    ok = web.post(link + "/unlock", json={"passcode": "correct horse"})
    assert ok.status_code == 200 and ok.json()["unlocked"]
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and f"path={link.lower()}" in cookie
    assert web.get(link).status_code == 200
    # the form flow of a browser: wrong, wrong, then locked even for the right passcode
    guesser = world.client()
    assert guesser.post(link + "/unlock", data={"passcode": "a"}).status_code == 403
    locked = guesser.post(link + "/unlock", data={"passcode": "b"}, headers={"Accept": "text/html"})
    assert locked.status_code == 410 and "locked" in locked.text
    assert guesser.post(link + "/unlock", json={"passcode": "correct horse"}).status_code == 410
    assert web.get(link + "/manifest").status_code == 410  # locked for everyone
    failures = world.audit("share.unlock", "failure")
    assert [f.detail.get("failed_passcodes") for f in failures] == [1, 2, 3, None]
    assert failures[2].flagged and "locked" in failures[3].reason
    assert len(world.audit("share.unlock", "success")) == 1
    assert world.client("rad").get("/api/v1/shares").json()[0]["status"] == "locked"


def test_burned_in_annotation_is_withheld_from_deidentified_shares(world, tmp_path) -> None:
    from tests.support.dicom import variant

    screenshot = variant(world.paths[0], tmp_path / "burned.dcm", SOPInstanceUID="2.25.4242",
                         BurnedInAnnotation="YES", InstanceNumber=9)
    assert ingest_path(world.rt, screenshot, actor="test").ok
    plain, deidentified = world.share(mode="download"), world.share(mode="download", deidentify=True)
    web = world.client()
    full = web.get(path_of(plain["url"]) + "/manifest").json()
    assert "2.25.4242" in {i["uid"] for s in full["series"] for i in s["instances"]} and not full["withheld"]
    cleaned = web.get(path_of(deidentified["url"]) + "/manifest").json()
    assert sum(len(s["instances"]) for s in cleaned["series"]) == 4
    assert cleaned["withheld"][0]["instances"] == 1 and "burned-in" in cleaned["withheld"][0]["reason"]
    assert "withheld" in web.get(path_of(deidentified["url"])).text
    with zipfile.ZipFile(io.BytesIO(web.get(path_of(deidentified["url"]) + "/download").content)) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".dcm")]) == 4
