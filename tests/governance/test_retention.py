"""Retention: selection by site/modality/age, what keeps a study, dry runs, purges, crash safety, the job.

Studies are aged by their Study Date (or, without one, by moving the clock
past their receipt); every test runs on SQLite and on PostgreSQL
(``READINGROOM_TEST_DATABASE_URL``).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import pydicom
import pytest
from sqlalchemy import select

from readingroom.app import build_scheduler
from readingroom.archive.check import check
from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import Patient
from readingroom.clock import FrozenClock, set_clock, utcnow
from readingroom.governance import retention_purge
from readingroom.governance.models import AuditRecord, BlobDeletion, LegalHold, RetentionRule, ShareLink
from readingroom.governance.retention_admin import create_hold, create_rule, release_hold
from readingroom.governance.retention_purge import delete_owed_blobs, purge_study
from readingroom.governance.retention_run import RetentionBusy, run_lock, run_retention
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case, CaseEvent, CasePrior
from tests.governance.retention_support import (
    HUB,
    LAKE,
    add_study,
    blob_keys,
    blob_path,
    case_of,
    close_case,
    complete_all,
    days_ago,
    make_sites,
    snapshot,
    study_exists,
)
from tests.support.dicom import sample, variant


def rule(rt: Runtime, name: str, days: int, *, site_id: int | None = None, modality: str = "") -> None:
    with rt.db.session() as s:
        create_rule(s, name=name, site_id=site_id, modality=modality, min_age_days=days, enabled=True,
                    actor="test", scope=None)


def hold(rt: Runtime, **target: str) -> int:
    with rt.db.session() as s:
        return create_hold(s, reason="litigation 2025-17", actor="test", scope=None, **target).hold.id


def dry(rt: Runtime) -> dict[str, object]:
    """study UID -> decision of a dry run."""
    return {d.study_uid: d for d in run_retention(rt, dry_run=True, actor="test").studies}


def test_rule_selects_by_site_modality_and_age(rt, tmp_path) -> None:
    sites = make_sites(rt)
    old_ct_hub = add_study(rt, tmp_path, study_date=days_ago(4000))
    old_mr_hub = add_study(rt, tmp_path, src="MR_small.dcm", study_date=days_ago(4000))
    old_ct_lake = add_study(rt, tmp_path, site=LAKE, study_date=days_ago(4000))
    young_ct_hub = add_study(rt, tmp_path, study_date=days_ago(300))
    undated_ct_hub = add_study(rt, tmp_path, study_date=None)
    edge_ct_hub = add_study(rt, tmp_path, study_date=days_ago(365))  # exactly 365 days: not *more* than 365
    complete_all(rt)
    for uid in (old_ct_hub, old_mr_hub, old_ct_lake, young_ct_hub, undated_ct_hub, edge_ct_hub):
        close_case(rt, uid)
    assert dry(rt) == {}  # no rule, nothing due

    rule(rt, "hub-ct-1y", 365, site_id=sites["HUB"], modality="CT")
    due = dry(rt)
    assert set(due) == {old_ct_hub}
    decision = due[old_ct_hub]
    assert decision.action == "would_purge" and decision.rule == "hub-ct-1y" and decision.reasons == []
    assert decision.age_days == 4000 and decision.instances == 2 and decision.bytes > 0

    previous = set_clock(FrozenClock(utcnow() + timedelta(days=400)))
    try:  # 400 days on: the undated study counts from its receipt, the young and edge ones from their dates
        assert set(dry(rt)) == {old_ct_hub, young_ct_hub, undated_ct_hub, edge_ct_hub}
    finally:
        set_clock(previous)

    rule(rt, "everything-10y", 3650)
    assert set(dry(rt)) == {old_ct_hub, old_mr_hub, old_ct_lake}
    # A longer rule that also matches governs: retention periods are minimums.
    rule(rt, "hub-ct-20y", 7300, site_id=sites["HUB"], modality="CT")
    due = dry(rt)
    assert set(due) == {old_mr_hub, old_ct_lake}
    assert {d.rule for d in due.values()} == {"everything-10y"}


def test_holds_open_cases_priors_and_arrivals_keep_a_study(rt, tmp_path) -> None:
    make_sites(rt)
    old = days_ago(4000)
    held_study = add_study(rt, tmp_path, study_date=old, patient="P-study-hold")
    held_patient = [add_study(rt, tmp_path, study_date=old, patient="P-held"),
                    add_study(rt, tmp_path, src="MR_small.dcm", site=LAKE, study_date=old, patient="P-held")]
    open_case = add_study(rt, tmp_path, study_date=old, patient="P-open")
    prior = add_study(rt, tmp_path, study_date=old, patient="P-prior")
    free = add_study(rt, tmp_path, study_date=old, patient="P-free")
    complete_all(rt)
    for uid in (held_study, *held_patient, prior, free):
        close_case(rt, uid)
    current = add_study(rt, tmp_path, study_date=days_ago(1), patient="P-prior")  # its open case links the prior
    complete_all(rt)
    arriving = add_study(rt, tmp_path, study_date=old, patient="P-arriving")  # never completed
    study_hold = hold(rt, study_uid=held_study)
    patient_hold = hold(rt, patient_id="P-held")
    rule(rt, "all-5y", 1825)

    due = dry(rt)
    assert set(due) == {held_study, *held_patient, open_case, prior, free, arriving}
    codes = {uid: [r.code for r in d.reasons] for uid, d in due.items()}
    assert codes[held_study] == ["legal_hold"] and f"#{study_hold}" in due[held_study].reasons[0].text
    assert codes[held_patient[0]] == codes[held_patient[1]] == ["legal_hold"]
    assert "P-held" in due[held_patient[1]].reasons[0].text
    assert codes[open_case] == ["open_case"]
    assert f"case #{case_of(rt, open_case)}" in due[open_case].reasons[0].text
    assert codes[prior] == ["prior_of_open_case"]
    assert f"case #{case_of(rt, current)}" in due[prior].reasons[0].text
    assert codes[arriving] == ["receiving"]
    assert codes[free] == [] and due[free].action == "would_purge"
    assert {uid for uid, d in due.items() if d.action == "keep"} == set(due) - {free}

    with rt.db.session() as s:
        release_hold(s, patient_hold, actor="test", scope=None, reason="matter settled")
    assert {uid for uid, d in dry(rt).items() if d.action == "would_purge"} == {free, *held_patient}


def test_dry_run_changes_nothing(rt, tmp_path) -> None:
    make_sites(rt)
    uids = [add_study(rt, tmp_path, study_date=days_ago(4000), patient=f"P-{i}") for i in range(3)]
    complete_all(rt)
    for uid in uids:
        close_case(rt, uid)
    rule(rt, "all-1y", 365)
    before = snapshot(rt)
    report = run_retention(rt, dry_run=True, actor="auditor-test")
    assert report.totals["due"] == report.totals["purge"] == 3 and report.totals["kept"] == 0
    assert {d.action for d in report.studies} == {"would_purge"}
    assert snapshot(rt) == before
    with rt.db.read_session() as s:
        actions = list(s.scalars(select(AuditRecord.action).where(AuditRecord.action.like("retention.%"))
                                 .order_by(AuditRecord.id)))
    assert actions == ["retention.rule.create", "retention.dry_run"]


def test_purge_removes_rows_and_blobs_keeps_closed_case_history_and_audits(rt, tmp_path) -> None:
    make_sites(rt)
    old = days_ago(4000)
    first = add_study(rt, tmp_path, study_date=old, patient="P-7", n=3)
    complete_all(rt)
    second = add_study(rt, tmp_path, src="MR_small.dcm", study_date=days_ago(3000), patient="P-7")
    complete_all(rt)  # second's case links first as a prior
    kept = add_study(rt, tmp_path, study_date=old, patient="P-8")
    complete_all(rt)
    final_case = close_case(rt, first, "final")
    cancelled_case = close_case(rt, second)
    close_case(rt, kept)
    hold(rt, study_uid=kept)
    with rt.db.session() as s:
        assert s.scalar(select(CasePrior.id).where(CasePrior.case_id == cancelled_case)) is not None
        s.add(ShareLink(token_hash=secrets.token_hex(32), prefix="rs_x", study_uid=first, created_by="test",
                        created_at=utcnow(), expires_at=utcnow() + timedelta(days=1)))
        events_before = len(list(s.scalars(select(CaseEvent.id).where(CaseEvent.case_id == final_case))))
    purged_keys = blob_keys(rt, first) + blob_keys(rt, second)
    kept_keys = blob_keys(rt, kept)
    rule(rt, "all-5y", 1825)

    report = run_retention(rt, dry_run=False, actor="retention-test")
    actions = {d.study_uid: d.action for d in report.studies}
    assert actions == {first: "purged", second: "purged", kept: "keep"}
    assert report.totals["purge"] == 2 and report.totals["instances"] == 5 and report.blobs_deleted == 5
    assert not study_exists(rt, first) and not study_exists(rt, second) and study_exists(rt, kept)
    assert all(not blob_path(rt, k).exists() for k in purged_keys)
    assert all(blob_path(rt, k).exists() for k in kept_keys)
    with rt.db.read_session() as s:
        assert s.scalar(select(Patient.id).where(Patient.patient_id == "P-7")) is not None  # patient stays
        cases = {c.id: c for c in s.scalars(select(Case).where(Case.id.in_([final_case, cancelled_case])))}
        assert cases[final_case].state == "final" and cases[final_case].study_pk is None
        assert cases[cancelled_case].state == "cancelled" and cases[cancelled_case].study_pk is None
        assert cases[final_case].patient_pk is not None and cases[final_case].accession_number is not None
        assert len(list(s.scalars(select(CaseEvent.id).where(CaseEvent.case_id == final_case)))) == events_before
        assert s.scalar(select(CasePrior.id).where(CasePrior.case_id == cancelled_case)) is None
        assert s.scalar(select(ShareLink.revoked_at).where(ShareLink.study_uid == first)) is not None
        assert s.scalar(select(BlobDeletion.id)) is None
        audits = list(s.scalars(select(AuditRecord).where(AuditRecord.action == "retention.purge")))
        run_audit = s.scalar(select(AuditRecord).where(AuditRecord.action == "retention.run"))
    assert sorted(a.resource_id for a in audits) == sorted([first, second])
    by_uid = {a.resource_id: a for a in audits}
    assert by_uid[first].actor == "retention-test" and by_uid[first].patient_id == "P-7"
    assert by_uid[first].detail["rule"] == "all-5y" and by_uid[first].detail["instances"] == 3
    assert by_uid[first].detail["bytes"] > 0 and by_uid[first].detail["cases_detached"] == 1
    assert by_uid[first].detail["share_links_revoked"] == 1 and by_uid[first].detail["priors_unlinked"] == 1
    assert run_audit is not None and run_audit.detail["purge"] == 2
    result = check(rt)
    assert result.clean and not result.orphan_blobs and not result.purge_pending, result

    again = run_retention(rt, dry_run=False, actor="retention-test")
    assert [(d.study_uid, d.action) for d in again.studies] == [(kept, "keep")]


def test_purge_rechecks_under_lock_what_changed_since_selection(rt, tmp_path) -> None:
    make_sites(rt)
    uid = add_study(rt, tmp_path, study_date=days_ago(4000))
    complete_all(rt)
    close_case(rt, uid)
    rule(rt, "all-1y", 365)
    [decision] = run_retention(rt, dry_run=True, actor="test").studies
    hold(rt, study_uid=uid)  # placed after the selection, before the purge transaction
    outcome = purge_study(rt, decision, now=utcnow(), actor="test")
    assert outcome.action == "keep" and outcome.reasons[0].code == "legal_hold"
    assert study_exists(rt, uid)
    with rt.db.session() as s:  # the hold goes, and so does the rule: no longer due
        s.execute(LegalHold.__table__.delete())
        s.execute(RetentionRule.__table__.delete())
    outcome = purge_study(rt, decision, now=utcnow(), actor="test")
    assert outcome.action == "skipped" and study_exists(rt, uid)


def test_a_crash_between_commit_and_blob_deletion_is_tolerated_and_finished(rt, tmp_path) -> None:
    make_sites(rt)
    uid = add_study(rt, tmp_path, study_date=days_ago(4000), n=3)
    complete_all(rt)
    close_case(rt, uid)
    rule(rt, "all-1y", 365)
    keys = blob_keys(rt, uid)
    [decision] = run_retention(rt, dry_run=True, actor="test").studies
    # The purge transaction commits, then the process "dies" before deleting any file.
    with rt.db.session() as s:
        outcome = retention_purge._purge_rows(s, decision, now=utcnow(), actor="test", source="", scope=None,
                                              requested_at=utcnow())
    assert outcome.action == "purged" and not study_exists(rt, uid)
    assert all(blob_path(rt, k).exists() for k in keys)

    pending = check(rt)
    assert pending.clean and sorted(pending.purge_pending) == sorted(keys) and not pending.orphan_blobs
    repaired = check(rt, repair=True)
    assert repaired.purge_completed == 3 and not repaired.reindexed  # deleted, not resurrected
    assert all(not blob_path(rt, k).exists() for k in keys) and not study_exists(rt, uid)
    final = check(rt)
    assert final.clean and not final.purge_pending and final.blobs == final.instances


def test_an_instance_received_again_after_the_purge_keeps_its_blob(rt, tmp_path) -> None:
    make_sites(rt)
    src = variant(sample("CT_small.dcm"), tmp_path / "again.dcm", InstitutionName=HUB, StudyDate=days_ago(4000),
                  PatientID="P-again")
    uid = pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID
    assert ingest_path(rt, src, actor="test").ok
    complete_all(rt)
    [key] = blob_keys(rt, uid)
    close_case(rt, uid)
    rule(rt, "all-1y", 365)
    [decision] = run_retention(rt, dry_run=True, actor="test").studies
    with rt.db.session() as s:  # purge committed, blob deletion not yet done ...
        retention_purge._purge_rows(s, decision, now=utcnow(), actor="test", source="", scope=None,
                                    requested_at=utcnow())
    assert ingest_path(rt, src, actor="test").status == "stored"  # ... and the same instance arrives again
    assert delete_owed_blobs(rt) == 0
    assert blob_path(rt, key).exists()
    assert check(rt).clean


def test_only_one_purge_runs_at_a_time(rt) -> None:
    with run_lock(rt), pytest.raises(RetentionBusy):
        run_retention(rt, dry_run=False, actor="test")
    run_retention(rt, dry_run=True, actor="test")  # dry runs need no lock
    with run_lock(rt):  # released again
        pass


def test_scheduled_job_follows_retention_mode_once_a_day(rt, tmp_path) -> None:
    make_sites(rt)
    uid = add_study(rt, tmp_path, study_date=days_ago(4000))
    complete_all(rt)
    close_case(rt, uid)
    rule(rt, "all-1y", 365)

    def job(runtime: Runtime):
        [found] = [j for j in build_scheduler(runtime).jobs if j.name == "retention"]
        return found.run()

    assert job(rt) is None and study_exists(rt, uid)  # retention_mode 'off' (the default)
    rt.settings = rt.settings.model_copy(update={"retention_mode": "dry-run"})
    report = job(rt)
    assert report is not None and report.dry_run and report.totals["purge"] == 1 and study_exists(rt, uid)
    rt.settings = rt.settings.model_copy(update={"retention_mode": "purge"})
    assert job(rt) is None and study_exists(rt, uid)  # today's run already happened (the dry run)
    other_process = Runtime.open(rt.settings, migrate=False)
    previous = set_clock(FrozenClock(utcnow() + timedelta(days=1)))
    try:
        purged = job(other_process)
        assert purged is not None and not purged.dry_run and purged.totals["purge"] == 1
        assert job(rt) is None  # the other "process" had tomorrow's run
    finally:
        set_clock(previous)
        other_process.close()
    assert not study_exists(rt, uid)
    with rt.db.read_session() as s:
        record = s.scalar(select(AuditRecord).where(AuditRecord.action == "retention.purge"))
    assert record is not None and record.actor == "system:retention" and record.source == "scheduler"
