"""Order <-> study reconciliation: by accession, by patient + procedure + time, late orders, mismatches."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from readingroom.archive.models import Study
from readingroom.clock import utcnow
from readingroom.interop import reconcile
from readingroom.interop.models import Order
from readingroom.workflow.cases import case_events
from readingroom.workflow.models import Case, ExceptionItem
from tests.interop import reconcile_support as support
from tests.interop.reconcile_support import complete_and_intake, ingest_study, place, study_dt
from tests.workflow import conftest as workflow_fixtures

network, sites, reconciling = workflow_fixtures.network, support.sites, support.reconciling  # fixtures

NEW_YORK = ZoneInfo("America/New_York")


def _study_case(rt: Any, uid: str) -> Case:
    with rt.db.read_session() as s:
        study_pk = s.scalar(select(Study.id).where(Study.study_uid == uid))
        return s.scalars(select(Case).where(Case.study_pk == study_pk)).one()


def _order(rt: Any, order_id: int) -> Order:
    with rt.db.read_session() as s:
        order = s.get(Order, order_id)
        s.expunge(order)
        return order


def _items(rt: Any, kind: str) -> list[ExceptionItem]:
    with rt.db.read_session() as s:
        return list(s.scalars(select(ExceptionItem).where(ExceptionItem.kind == kind)))


def _kinds(rt: Any, case_id: int) -> list[str]:
    with rt.db.read_session() as s:
        return [e.kind for e in case_events(s, case_id)]


def test_order_first_then_study_by_accession(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    order = place(rt, accession_number="ACC-100", patient_id="MRN-100", priority="stat")
    uid = ingest_study(rt, tmp_path, n=2, AccessionNumber="ACC-100", PatientID="MRN-100")
    created = complete_and_intake(rt)
    assert created == [order.case_id]  # the order's read, not a second case
    case = _study_case(rt, uid)
    assert case.id == order.case_id and case.priority == "stat" and case.state != "waiting"
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 1
        arrived = [e for e in case_events(s, case.id) if e.kind == "images_arrived"]
    assert len(arrived) == 1
    assert arrived[0].data["status"] == "study available" and arrived[0].data["matched_by"] == "accession number"
    assert arrived[0].data["order_id"] == order.id
    linked = _order(rt, order.id)
    assert linked.status == "completed" and linked.study_pk == case.study_pk


def test_study_first_then_order_takes_its_priority(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    uid = ingest_study(rt, tmp_path, AccessionNumber="ACC-200", PatientID="MRN-200")
    [case_id] = complete_and_intake(rt)
    assert _study_case(rt, uid).priority == "routine"
    order = place(rt, accession_number="ACC-200", patient_id="MRN-200", priority="stat", patient_class="E",
                  ordering_provider="Hartmann^Lena")
    linked = _order(rt, order.id)
    assert linked.status == "completed" and linked.case_id == case_id
    case = _study_case(rt, uid)
    assert (case.priority, case.priority_source, case.patient_class) == ("stat", "order", "ED")
    assert case.ordering_physician == "Hartmann^Lena" and case.order_fields["order_id"] == order.id
    kinds = _kinds(rt, case_id)
    assert "order_linked" in kinds
    assert kinds[-1] == "routed"  # re-routed with the order's priority
    with rt.db.read_session() as s:
        [event] = [e for e in case_events(s, case_id) if e.kind == "order_linked"]
        assert event.data["order_id"] == order.id and event.data["priority"] == {"from": "routine", "to": "stat"}
        placeholder = s.get(Case, event.data["cancelled_case"])
        assert placeholder.state == "cancelled"  # the order's empty waiting case does not linger
        assert s.scalar(select(func.count()).select_from(Case).where(Case.state != "cancelled")) == 1


def test_no_accession_links_by_patient_procedure_and_time(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    requested = utcnow().replace(microsecond=0) - timedelta(hours=5)
    order = place(rt, patient_id="MRN-300", requested_at=requested, modality="CT")
    performed = (requested + timedelta(hours=2)).astimezone(NEW_YORK).replace(tzinfo=None)
    uid = ingest_study(rt, tmp_path, AccessionNumber="", PatientID="MRN-300", **study_dt(performed))
    assert complete_and_intake(rt) == [order.case_id]
    assert _order(rt, order.id).status == "completed"
    with rt.db.read_session() as s:
        arrived = [e for e in case_events(s, order.case_id) if e.kind == "images_arrived"]
    assert arrived[0].data["matched_by"] == "patient, procedure and time"
    assert _study_case(rt, uid).id == order.case_id


def test_outside_the_window_or_other_modality_is_no_match(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    requested = utcnow().replace(microsecond=0) - timedelta(days=3)
    old = place(rt, patient_id="MRN-310", requested_at=requested, modality="CT")
    mr = place(rt, patient_id="MRN-310", requested_at=utcnow() - timedelta(hours=1), modality="MR")
    performed = utcnow().astimezone(NEW_YORK).replace(tzinfo=None)
    uid = ingest_study(rt, tmp_path, AccessionNumber="", PatientID="MRN-310", **study_dt(performed))
    [case_id] = complete_and_intake(rt)
    assert case_id not in (old.case_id, mr.case_id)
    assert _study_case(rt, uid).id == case_id
    assert _order(rt, old.id).status == "active" and _order(rt, mr.id).status == "active"


def test_accession_of_another_patient_is_a_mismatch(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    order = place(rt, accession_number="ACC-400", patient_id="MRN-400")
    uid = ingest_study(rt, tmp_path, AccessionNumber="ACC-400", PatientID="MRN-999")
    [case_id] = complete_and_intake(rt)
    assert case_id != order.case_id  # the study is read on its own, never attached to MRN-400's order
    assert _study_case(rt, uid).id == case_id
    [item] = _items(rt, "order_mismatch")
    assert item.case_id == order.case_id and item.study_uid == uid
    assert "MRN-400" in item.reason and "MRN-999" in item.reason and "ACC-400" in item.reason
    assert _order(rt, order.id).status == "active"
    with rt.db.read_session() as s:
        assert s.get(Case, order.case_id).state == "waiting"


def test_two_candidate_orders_are_a_mismatch(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    first = place(rt, patient_id="MRN-500", requested_at=utcnow() - timedelta(hours=3))
    second = place(rt, patient_id="MRN-500", requested_at=utcnow() - timedelta(hours=2))
    performed = utcnow().astimezone(NEW_YORK).replace(tzinfo=None)
    ingest_study(rt, tmp_path, AccessionNumber="", PatientID="MRN-500", **study_dt(performed))
    [case_id] = complete_and_intake(rt)
    assert case_id not in (first.case_id, second.case_id)
    [item] = _items(rt, "order_mismatch")
    assert str(first.id) in item.reason and str(second.id) in item.reason
    assert {_order(rt, first.id).status, _order(rt, second.id).status} == {"active"}


def test_late_order_for_another_patient_is_not_linked(reconciling: Any, tmp_path: Path) -> None:
    rt = reconciling
    uid = ingest_study(rt, tmp_path, AccessionNumber="ACC-600", PatientID="MRN-600")
    [case_id] = complete_and_intake(rt)
    order = place(rt, accession_number="ACC-600", patient_id="MRN-601", priority="stat")
    assert _order(rt, order.id).status == "active"
    assert _study_case(rt, uid).priority == "routine"
    [item] = _items(rt, "order_mismatch")
    assert item.case_id == order.case_id and "MRN-601" in item.reason and "MRN-600" in item.reason
    assert "order_linked" not in _kinds(rt, case_id)


def test_overdue_orders_are_reported_once(reconciling: Any) -> None:
    rt = reconciling
    order = place(rt, accession_number="ACC-700", patient_id="MRN-700")
    rt.settings.reconcile_overdue_hours = 4
    later = utcnow() + timedelta(hours=5)
    assert reconcile.flag_overdue(rt, now=utcnow()) == 0
    assert reconcile.flag_overdue(rt, now=later) == 1
    assert reconcile.flag_overdue(rt, now=later) == 0
    [item] = _items(rt, "order_overdue")
    assert item.case_id == order.case_id and "ACC-700" in item.reason


def test_study_time_uses_the_site_time_zone(sites: Any, tmp_path: Path) -> None:
    rt = sites
    uid = ingest_study(rt, tmp_path, StudyDate="20250115", StudyTime="083000.5")
    with rt.db.read_session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == uid)).one()
        at = reconcile.study_time(s, study)
    assert at == at.replace(year=2025, month=1, day=15, hour=13, minute=30, second=0, tzinfo=UTC)


def test_serve_installs_reconciliation(sites: Any) -> None:
    from readingroom.app import build_scheduler
    from readingroom.interop import orders
    from readingroom.workflow import cases

    try:
        names = {job.name for job in build_scheduler(sites).jobs}
        assert {"interop-identity", "interop-duplicates", "interop-orders-overdue"} <= names
        assert reconcile.match_study in cases._study_matchers
        assert reconcile.link_placed_order in orders._placed_hooks
    finally:
        reconcile.uninstall()
