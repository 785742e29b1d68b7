"""The two-site world the authorisation matrix runs in.

Two sites (A and B), five studies ingested through the archive and turned
into cases by the workflow's own intake, one user of every role at site A,
and the relationships the issue names. Study and case targets:

==================  ======  =====================================================================
target              site    relationship
==================  ======  =====================================================================
``own``             A       ordered by the referring clinician (order case, ``ordering_physician``),
                            assigned to the radiologist, consultant asked (AccessGrant)
``own_unrelated``   A       nobody under test (read by another radiologist of site A)
``other_related``   B       referring physician in the DICOM header, assigned to the radiologist,
                            consultant asked (AccessGrant, priors included)
``other_prior``     B       an earlier study of ``other_related``'s patient, already reported
``other``           B       nobody under test
==================  ======  =====================================================================

Other resources use ``own`` (belongs to site A) and ``other`` (site B):
DICOM peers, users and their reader profiles, exception items, retention
rules, legal holds, break-the-glass reviews, share links. Resources that
belong to a person (tokens, sessions, share links one created) add ``mine``:
the caller's own one (``own`` / ``other`` are then a site-A / site-B user's).

The world is built once per test module; :meth:`World.restore` puts the rows
allowed requests change back after every state-changing request, so each
cell of the matrix starts from the same state. Resources a request consumes
(a deleted peer, a released hold, a revoked link) are made fresh per call.
"""

from __future__ import annotations

import itertools
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import delete, insert, select, text, update

from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import Series, Study
from readingroom.archive.peers import add_peer
from readingroom.archive.stability import complete_stable_studies
from readingroom.clock import utcnow
from readingroom.governance import policy, sessions, shares
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import (
    AccessGrant,
    ApiToken,
    LegalHold,
    RetentionRule,
    ShareLink,
    SiteMembership,
    User,
)
from readingroom.governance.sites import create_site
from readingroom.governance.users import ROLES, create_token, create_user
from readingroom.runtime import Runtime
from readingroom.workflow import jobs
from readingroom.workflow.cases import Actor, create_case_for_order, transition
from readingroom.workflow.exceptions import raise_item
from readingroom.workflow.models import Case, CaseCandidate, ExceptionItem
from readingroom.workflow.readers import set_reader
from tests.support.dicom import new_study

ANONYMOUS = "anonymous"
#: Every role the matrix checks, in table order (service roles last, then no credentials at all).
MATRIX_ROLES: tuple[str, ...] = (*ROLES, ANONYMOUS)
STUDY_TARGETS = ("own", "own_unrelated", "other_related", "other_prior", "other")
CASE_TARGETS = ("own", "own_unrelated", "other_related", "other")
SITE_TARGETS = ("own", "other")
PERSONAL_TARGETS = ("mine", "own", "other")

SITE_A_NAME = "Alpha General Hospital"
SITE_B_NAME = "Beta Community Hospital"
REFERRER = "Referrer^Rita"  # the referring clinician's physician_name
SHARE_PASSCODE = "matrix-passcode-7"

#: User columns requests may change (password, second factor, lockout, profile), put back after each cell.
_USER_COLUMNS = ("password_hash", "failed_logins", "locked_until", "totp_secret", "totp_enabled", "active", "role",
                 "site_id", "full_name", "email", "physician_name")


def password_of(username: str) -> str:
    return f"pw-{username}-matrix-9"


@dataclass(frozen=True)
class StudyRef:
    """One fixture study and the UIDs a DICOMweb path needs."""

    study_uid: str
    series_uid: str
    sop_uid: str
    site: str  # "A" or "B"
    institution: str
    patient_id: str


@dataclass
class World:
    """Handles on the fixture: the app client, a bearer header per role and the resources."""

    rt: Runtime
    client: TestClient
    data_dir: Path
    headers: dict[str, dict[str, str]]
    users: dict[str, int]
    sites: dict[str, int]
    studies: dict[str, StudyRef]
    cases: dict[str, int]
    exception_items: dict[str, int]
    readers: dict[str, str]
    peers: dict[str, str]
    rules: dict[str, str]
    holds: dict[str, int]
    _snapshot: dict[str, Any] = field(default_factory=dict)
    _locked_shares: dict[str, tuple[int, str]] = field(default_factory=dict)
    _counter: Any = field(default_factory=lambda: itertools.count(1))

    # -- names -----------------------------------------------------------------------------------------------

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter)}-{uuid.uuid4().hex[:6]}"

    def site_of(self, target: str) -> int:
        return self.sites["A" if target.startswith("own") else "B"]

    def site_code(self, target: str) -> str:
        return "SITEA" if target.startswith("own") else "SITEB"

    def owner(self, role: str, target: str) -> str:
        """Whose personal resource a target is: the caller's (``mine``), a site-A or a site-B user's."""
        if target == "mine":
            return "reader_a" if role == ANONYMOUS else role
        return "reader_a" if target == "own" else "reader_b"

    # -- credentials -----------------------------------------------------------------------------------------

    def session_headers(self, role: str) -> dict[str, str]:
        """A new browser session of ``role`` (cookie and CSRF header); none for anonymous."""
        if role == ANONYMOUS:
            return {}
        with self.rt.db.session() as s:
            user = s.get(User, self.users[role])
            row, secret = sessions.create_session(s, user, settings=self.rt.settings, auth_method="password",
                                                  mfa_passed=True, source="matrix")
            csrf = row.csrf_token
        return {"Cookie": f"rr_session={secret}", "X-CSRF-Token": csrf}

    # -- per-call resources ----------------------------------------------------------------------------------

    def fresh_peer(self, target: str) -> str:
        """A new DICOM peer of site A or B, so deleting it never starves later cells."""
        name = self.unique("peer-")
        with self.rt.db.session() as s:
            add_peer(s, name, "MATRIX", "127.0.0.1", 104, site_id=self.site_of(target))
        self.rt.invalidate("peers.")
        return name

    def fresh_rule(self, target: str) -> int:
        with self.rt.db.session() as s:
            rule = RetentionRule(name=self.unique("rule-"), site_id=self.site_of(target), modality="",
                                 min_age_days=36_500, enabled=True, created_by="matrix", created_at=utcnow())
            s.add(rule)
            s.flush()
            return rule.id

    def fresh_hold(self, target: str) -> int:
        with self.rt.db.session() as s:
            hold = LegalHold(study_uid=self.studies[target].study_uid, reason="matrix", created_by="matrix",
                             created_at=utcnow())
            s.add(hold)
            s.flush()
            return hold.id

    def fresh_review(self, target: str) -> int:
        """A pending break-the-glass grant of a site-A reader on a site-A or site-B study."""
        with self.rt.db.session() as s:
            grant = AccessGrant(user_id=self.users["reader_a"], kind="break_glass",
                                study_uid=self.studies[target].study_uid, include_priors=True,
                                reason="matrix: emergency review of outside images", granted_by="reader_a",
                                created_at=utcnow(), expires_at=utcnow() + timedelta(minutes=5),
                                review_state="pending")
            s.add(grant)
            s.flush()
            return grant.id

    def fresh_share(self, target: str, *, creator: str = "reader_a", passcode: str | None = None) -> tuple[int, str]:
        """A share link (id, secret) to the site-A or site-B study, created by ``creator``."""
        secret = shares.SECRET_PREFIX + secrets.token_urlsafe(32)
        study = "own" if target in ("mine", "own") else "other"
        with self.rt.db.session() as s:
            link = ShareLink(token_hash=shares.token_hash(secret), prefix=secret[:10],
                             study_uid=self.studies[study].study_uid, mode="download", deidentify=False,
                             uid_salt=secrets.token_hex(32),
                             passcode_hash=shares.PASSCODES.hash(passcode) if passcode else None,
                             recipient="matrix recipient", created_by=creator, created_at=utcnow(),
                             expires_at=utcnow() + timedelta(hours=1), access_count=0, failed_passcodes=0)
            s.add(link)
            s.flush()
            return link.id, secret

    def locked_share(self, target: str) -> tuple[int, str]:
        """A passcode-protected link per target, made once (hashing a passcode is slow on purpose)."""
        if target not in self._locked_shares:
            self._locked_shares[target] = self.fresh_share(target, passcode=SHARE_PASSCODE)
        return self._locked_shares[target]

    def fresh_token(self, username: str) -> int:
        with self.rt.db.session() as s:
            user = s.scalars(select(User).where(User.username == username)).one()
            return create_token(s, user, name="matrix-spare")[0].id

    def fresh_session(self, username: str) -> int:
        with self.rt.db.session() as s:
            user = s.scalars(select(User).where(User.username == username)).one()
            row, _ = sessions.create_session(s, user, settings=self.rt.settings, auth_method="password",
                                             mfa_passed=True, source="matrix")
            return row.id

    def ensure_membership(self, username: str, target: str) -> None:
        with self.rt.db.session() as s:
            user_id = s.scalar(select(User.id).where(User.username == username))
            site_id = self.site_of(target)
            if s.get(SiteMembership, (user_id, site_id)) is None:
                s.add(SiteMembership(user_id=user_id, site_id=site_id, role="", created_at=utcnow()))

    def instance_bytes(self, target: str | None) -> bytes:
        """A new, valid instance: of the target study (same patient and site), or of a new site-A study."""
        ref = self.studies[target] if target else None
        ds = pydicom.dcmread(self.data_dir / "stow-template.dcm")
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.StudyInstanceUID = ref.study_uid if ref else generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.InstitutionName = ref.institution if ref else SITE_A_NAME
        ds.PatientID = ref.patient_id if ref else self.unique("PNEW")
        out = self.data_dir / f"{sop}.dcm"
        ds.save_as(out, enforce_file_format=False)
        data = out.read_bytes()
        out.unlink()
        return data

    # -- keeping every cell independent ----------------------------------------------------------------------

    def snapshot(self) -> None:
        """Remember the rows allowed requests change: cases, candidates, exception items, accounts, grants."""
        with self.rt.db.read_session() as s:
            self._snapshot = {
                "cases": [_row(c) for c in s.scalars(select(Case))],
                "candidates": [(c.case_id, c.user_id) for c in s.scalars(select(CaseCandidate))],
                "items": [_row(i) for i in s.scalars(select(ExceptionItem))],
                "users": [{"id": u.id, **{c: getattr(u, c) for c in _USER_COLUMNS}} for u in s.scalars(select(User))],
                "tokens": list(s.execute(select(ApiToken.id, ApiToken.revoked_at))),
                "grants": [_row(g) for g in s.scalars(select(AccessGrant))],
                "memberships": [_row(m) for m in s.scalars(select(SiteMembership))],
            }

    def restore(self) -> None:
        """Put the snapshot back (case events and audit records stay: they are append-only logs)."""
        snap = self._snapshot
        with self.rt.db.session() as s:
            for row in snap["cases"]:
                s.execute(update(Case).where(Case.id == row["id"]).values(**row))
            s.execute(delete(CaseCandidate))
            for case_id, user_id in snap["candidates"]:
                s.execute(insert(CaseCandidate).values(case_id=case_id, user_id=user_id))
            for row in snap["items"]:
                s.execute(update(ExceptionItem).where(ExceptionItem.id == row["id"]).values(**row))
            for row in snap["users"]:
                s.execute(update(User).where(User.id == row["id"]).values(**row))
            for token_id, revoked_at in snap["tokens"]:
                s.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=revoked_at))
            s.execute(delete(AccessGrant).where(AccessGrant.id.not_in([g["id"] for g in snap["grants"]])))
            for row in snap["grants"]:
                s.execute(update(AccessGrant).where(AccessGrant.id == row["id"]).values(**row))
            s.execute(delete(SiteMembership))
            for row in snap["memberships"]:
                s.execute(insert(SiteMembership).values(**row))
        forget_cached_credentials()
        sessions.forget_cached_sessions()
        policy.forget_decisions()

    def fingerprint(self) -> tuple[Any, ...]:
        """A cheap summary of the state a refused request must not change (plain SQL: it runs twice a cell)."""
        with self.rt.db.read_session() as s:
            return tuple(tuple(s.execute(query).all()) for query in _FINGERPRINT)


#: What a refused request must leave as it was: the rows allowed requests of the matrix change.
_FINGERPRINT = tuple(text(q) for q in (
    "SELECT * FROM cases ORDER BY id",
    "SELECT case_id, user_id FROM case_candidates ORDER BY case_id, user_id",
    "SELECT id, state FROM exception_items ORDER BY id",
    "SELECT name, site_id FROM dicom_peers ORDER BY name",
    f"SELECT username, {', '.join(_USER_COLUMNS)} FROM users ORDER BY username",
    "SELECT user_id, site_id, role FROM site_memberships ORDER BY user_id, site_id",
    "SELECT code FROM sites ORDER BY code",
    "SELECT version, active FROM routing_rules ORDER BY version",
    "SELECT id, revoked_at FROM api_tokens ORDER BY id",
    "SELECT id, revoked_at, review_state FROM access_grants ORDER BY id",
    "SELECT id, enabled FROM retention_rules ORDER BY id",
    "SELECT id, released_at FROM legal_holds ORDER BY id",
    "SELECT id, revoked_at FROM share_links ORDER BY id",
    "SELECT count(*) FROM instances",
))


def _row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__mapper__.column_attrs}


# -- building it ---------------------------------------------------------------------------------------------


def _study(rt: Runtime, out: Path, *, institution: str, patient_id: str, accession: str, referring: str,
           study_date: str) -> StudyRef:
    paths = new_study("CT_small.dcm", out / accession, 1, InstitutionName=institution, PatientID=patient_id,
                      PatientName=f"Matrix^{patient_id}", AccessionNumber=accession,
                      ReferringPhysicianName=referring, StudyDate=study_date)
    result = ingest_path(rt, paths[0], actor="matrix-fixture")
    assert result.ok, result
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return StudyRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                    "A" if institution == SITE_A_NAME else "B", institution, patient_id)


def build_world(rt: Runtime, data_dir: Path, client: TestClient) -> World:
    """Sites, users, studies, cases and relationships as the module docstring describes."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with rt.db.session() as s:
        site_a = create_site(s, "SITEA", SITE_A_NAME, jurisdiction="XA").id
        site_b = create_site(s, "SITEB", SITE_B_NAME, jurisdiction="XB").id
        users: dict[str, int] = {}
        headers: dict[str, dict[str, str]] = {ANONYMOUS: {}}
        for role in ROLES:
            user = create_user(s, role, role=role, site_id=site_a, full_name=f"Matrix {role}",
                               password=password_of(role))
            if role == "referring_clinician":
                user.physician_name = REFERRER
            users[role] = user.id
            headers[role] = {"Authorization": f"Bearer {create_token(s, user, name='matrix')[1]}"}
        # Readers outside the matrix who hold the unrelated cases and own the "own"/"other" personal resources.
        users["reader_a"] = create_user(s, "reader_a", role="radiologist", site_id=site_a,
                                        password=password_of("reader_a")).id
        users["reader_b"] = create_user(s, "reader_b", role="radiologist", site_id=site_b,
                                        password=password_of("reader_b")).id
        # The order for ``own`` comes first, so intake attaches the study to it (Case.ordering_physician).
        create_case_for_order(s, accession_number="ACC-OWN", site_id=site_a, modality="CT",
                              ordering_physician=REFERRER)
    rt.invalidate("sites.")

    studies = {
        "own": _study(rt, data_dir, institution=SITE_A_NAME, patient_id="PA1", accession="ACC-OWN",
                      referring="Nobody^Else", study_date="20250105"),
        "own_unrelated": _study(rt, data_dir, institution=SITE_A_NAME, patient_id="PA2", accession="ACC-A2",
                                referring="Other^Doc", study_date="20250105"),
        "other_prior": _study(rt, data_dir, institution=SITE_B_NAME, patient_id="PB1", accession="ACC-B0",
                              referring="Other^Doc", study_date="20200105"),
        "other_related": _study(rt, data_dir, institution=SITE_B_NAME, patient_id="PB1", accession="ACC-B1",
                                referring=REFERRER, study_date="20250105"),
        "other": _study(rt, data_dir, institution=SITE_B_NAME, patient_id="PB2", accession="ACC-B2",
                        referring="Other^Doc", study_date="20250105"),
    }
    src = Path(new_study("CT_small.dcm", data_dir / "template", 1)[0])
    src.rename(data_dir / "stow-template.dcm")
    assert complete_stable_studies(rt, stable_age=0)
    jobs.intake(rt)

    with rt.db.session() as s:
        case_of = {name: s.scalar(select(Case.id).join(Study, Study.id == Case.study_pk)
                                  .where(Study.study_uid == ref.study_uid)) for name, ref in studies.items()}
        assert all(case_of.values()), case_of
        assert s.get(Case, case_of["own"]).ordering_physician == REFERRER
        for name, ref in studies.items():
            assert s.scalar(select(Study.site_id).where(Study.study_uid == ref.study_uid)) == (
                site_a if ref.site == "A" else site_b), f"{name} not indexed at site {ref.site}"
        for name, ref in (("own", studies["own"]), ("other_related", studies["other_related"])):
            s.add(AccessGrant(user_id=users["consultant"], kind="consult", case_id=case_of[name],
                              study_uid=ref.study_uid, include_priors=True, reason="matrix: consult requested",
                              granted_by="radiologist", created_at=utcnow()))
        items = {
            "own": raise_item(s, kind="manual_check", reason="matrix", case_id=case_of["own_unrelated"],
                              study_uid=studies["own_unrelated"].study_uid),
            "other": raise_item(s, kind="manual_check", reason="matrix", case_id=case_of["other"],
                                study_uid=studies["other"].study_uid),
        }
        exception_items = {k: v.id for k, v in items.items() if v is not None}
        assert len(exception_items) == 2

    admin = headers["admin"]
    assignments = {"own": "radiologist", "other_related": "radiologist", "own_unrelated": "reader_a",
                   "other": "reader_b", "other_prior": "reader_b"}
    for target, reader in assignments.items():
        r = client.post(f"/api/v1/cases/{case_of[target]}/reassign", headers=admin,
                        json={"to": reader, "reason": "matrix fixture"})
        assert r.status_code == 200, r.text
    with rt.db.session() as s:
        # The prior was read long ago; the exception items were closed by the reassignments: reopen them.
        transition(s, case_of["other_prior"], "completed", Actor(name="reader_b", user_id=users["reader_b"]))
        s.execute(update(ExceptionItem).where(ExceptionItem.id.in_(exception_items.values()))
                  .values(state="open", resolved_at=None, resolved_by="", resolution=""))
        set_reader(s, "reader_a", home_site="SITEA", credentials={"SITEA": None})
        set_reader(s, "reader_b", home_site="SITEB", credentials={"SITEB": None})
        peers = {"own": "peer-site-a", "other": "peer-site-b"}
        add_peer(s, peers["own"], "PACSA", "127.0.0.1", 104, site_id=site_a)
        add_peer(s, peers["other"], "PACSB", "127.0.0.1", 104, site_id=site_b)
        rules = {"own": "keep-site-a", "other": "keep-site-b"}
        for target, name in rules.items():
            s.add(RetentionRule(name=name, site_id=site_a if target == "own" else site_b, modality="",
                                min_age_days=36_500, enabled=True, created_by="matrix", created_at=utcnow()))
        hold_rows = {t: LegalHold(study_uid=studies[t].study_uid, reason="matrix", created_by="matrix",
                                  created_at=utcnow()) for t in ("own", "other")}
        s.add_all(hold_rows.values())
        s.flush()
        holds = {t: h.id for t, h in hold_rows.items()}
        assert s.scalar(select(Series.id).join(Study).where(Study.study_uid == studies["own"].study_uid))

    world = World(rt=rt, client=client, data_dir=data_dir, headers=headers, users=users,
                  sites={"A": site_a, "B": site_b}, studies=studies, cases=case_of,
                  exception_items=exception_items, readers={"own": "reader_a", "other": "reader_b"},
                  peers=peers, rules=rules, holds=holds)
    world.snapshot()
    return world
