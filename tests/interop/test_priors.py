"""Prior fetching from a real Orthanc: C-FIND + C-MOVE to our DIMSE listener, linked to the case, no case of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from readingroom.archive.dimse import DimseServer
from readingroom.archive.models import Study
from readingroom.archive.peers import PeerInfo
from readingroom.archive.stability import complete_stable_studies
from readingroom.interop import outbox, priors, qr_scu
from readingroom.interop.models import OutboxItem
from readingroom.workflow import jobs
from readingroom.workflow.models import Case, CasePrior
from tests.interop.forwarding_support import ORTHANC_EXTRA, add_destination, ingest_complete, runtime, write_study
from tests.interop.orthanc import orthanc

pytestmark = pytest.mark.timeout(240)


def test_prior_is_fetched_by_c_move_linked_to_the_case_and_gets_no_case(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        server = DimseServer(rt)
        server.start()
        try:
            ours = {"readingroom": (rt.settings.aet, "127.0.0.1", rt.settings.dicom_port)}
            with orthanc(tmp_path, modalities=ours, extra=ORTHANC_EXTRA) as peer:
                pacs = PeerInfo(0, "orthanc", peer.aet, "127.0.0.1", peer.dicom_port, None, True, True, True)
                old = write_study(tmp_path / "old", patient=5, days_ago=400, accession="OLD1")
                old_uid = str(dcmread(old[0], stop_before_pixels=True).StudyInstanceUID)
                files = [(p, str(dcmread(p).SOPClassUID), "1.2.840.10008.1.2.1") for p in old]
                assert qr_scu.store_files(rt, pacs, files) == (3, [])
                add_destination(rt, "pacs", "dicom", peer=(peer.aet, "127.0.0.1", peer.dicom_port),
                                prior_source=True)

                new_uid = ingest_complete(rt, write_study(tmp_path / "new", patient=5, days_ago=0,
                                                          accession="NEW1"))
                [case_id] = jobs.intake(rt)
                assert priors.queue_prior_fetches(rt) == 1
                assert priors.queue_prior_fetches(rt) == 0
                assert outbox.deliver_due(rt) == 1

            with rt.db.read_session() as s:
                item = s.scalars(select(OutboxItem)).one()
                assert item.state == "delivered" and item.result["linked"] == [old_uid], item.result
                prior = s.scalars(select(Study).where(Study.study_uid == old_uid)).one()
                assert prior.origin.startswith("prior:") and prior.num_instances == 3
                assert "interop_role" not in prior.attrs and "origin" not in prior.attrs  # not in QIDO answers
                assert s.scalars(select(CasePrior.study_pk).where(CasePrior.case_id == case_id)).all() == [prior.id]
            # the fetched prior completes like any study, but intake makes no read of it
            complete_stable_studies(rt, stable_age=0)
            assert jobs.intake(rt) == []
            with rt.db.read_session() as s:
                assert s.scalar(select(func.count(Case.id))) == 1
                assert s.scalar(select(Case.study_pk).where(Case.id == case_id)) == s.scalar(
                    select(Study.id).where(Study.study_uid == new_uid))
        finally:
            server.stop()


def test_choose_priors_skips_current_held_old_and_limits() -> None:
    found = [{"StudyInstanceUID": uid, "StudyDate": date, "StudyTime": ""} for uid, date in
             (("cur", "20990101"), ("held", "20200101"), ("a", "20000101"), ("b", "20240101"), ("c", "20230101"))]
    picked = priors.choose_priors(found, current_uid="cur", have={"held"}, max_studies=1, lookback_days=0,
                                  today="20500101")
    assert [p["StudyInstanceUID"] for p in picked] == ["b"]
