"""Go-live validation (``readingroom peer test``) against a real Orthanc, and against a closed port."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from readingroom.archive.models import Study
from readingroom.clock import utcnow
from readingroom.interop import golive
from readingroom.interop.models import PeerValidation
from tests.interop.forwarding_support import ORTHANC_EXTRA, add_destination, runtime
from tests.interop.orthanc import orthanc
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(240)


def _by_step(run: PeerValidation) -> dict[str, dict]:  # type: ignore[type-arg]
    return {st["step"]: st for st in run.steps}


def test_validation_against_orthanc_passes(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt, orthanc(tmp_path, modalities={"rr": (rt.settings.aet, "127.0.0.1", 1)},
                                          extra=ORTHANC_EXTRA) as peer:
        add_destination(rt, "orthanc", "dicom", peer=(peer.aet, "127.0.0.1", peer.dicom_port))
        with rt.db.session() as s:
            from readingroom.interop.models import Destination

            peer_id = s.scalar(select(Destination.peer_id).where(Destination.name == "orthanc"))
        add_destination(rt, "orthanc-web", "dicomweb", url=f"{peer.base_url}/dicom-web")
        with rt.db.session() as s:
            s.scalars(select(Destination).where(Destination.name == "orthanc-web")).one().peer_id = peer_id
        run = golive.run_validation(rt, "peer-orthanc", actor="test")
        steps = _by_step(run)
        assert run.status == "passed", run.steps
        assert [steps[k]["status"] for k in golive.STEPS] == ["passed"] * 4 + ["skipped"] * 2
        assert steps["fetch-back"]["throughput_mb_s"] > 0 and "byte-identical" in steps["fetch-back"]["detail"]
        assert "no HL7 destination" in steps["hl7-order"]["detail"] or "no site" in steps["hl7-order"]["detail"]
        # the test study reached the peer and never entered our archive
        assert any(p["MainDicomTags"].get("PatientID") == golive.TEST_PATIENT_ID
                   for p in peer.get("/patients", expand="true"))
        with rt.db.read_session() as s:
            assert s.scalar(select(func.count(Study.id))) == 0
            assert [r.status for r in golive.history(s, "peer-orthanc")] == ["passed"]


def test_peer_test_cli_fails_clearly_against_a_closed_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from readingroom.cli import app

    with runtime(tmp_path) as rt:
        add_destination(rt, "nowhere", "dicom", peer=("NOBODY", "127.0.0.1", free_port()))
        if rt.settings.database_url:
            monkeypatch.setenv("READINGROOM_DATABASE_URL", rt.settings.database_url)
        result = CliRunner().invoke(app, ["peer", "test", "peer-nowhere", "--data-dir", str(rt.settings.data_dir)])
        assert result.exit_code == 1, result.output
        assert "c-echo" in result.output and "validation 1: FAILED" in result.output
        with rt.db.read_session() as s:
            [run] = golive.history(s, "peer-nowhere")
            echo = _by_step(run)["c-echo"]
            assert run.status == "failed" and echo["ok"] is False and "did not answer C-ECHO" in echo["detail"]
        missing = CliRunner().invoke(app, ["peer", "test", "no-such-peer", "--data-dir", str(rt.settings.data_dir)])
        assert missing.exit_code == 2


def test_hl7_round_trip_steps_with_a_real_mllp_receiver(tmp_path: Path) -> None:
    from readingroom.governance.sites import create_site
    from readingroom.interop.models import Destination, Order
    from readingroom.workflow.models import Case
    from tests.support.hl7_receiver import Hl7Receiver

    receiver = Hl7Receiver().start()
    try:
        with runtime(tmp_path) as rt:
            with rt.db.session() as s:
                site_id = create_site(s, "HUB", "Hub Hospital").id
            add_destination(rt, "closed", "dicom", peer=("NOBODY", "127.0.0.1", free_port()), site_id=site_id)
            with rt.db.session() as s:
                s.add(Destination(name="ris", kind="hl7", host="127.0.0.1", port=receiver.port, site_id=site_id,
                                  options={"receiving_application": "RIS"}, events=[], created_at=utcnow()))
            run = golive.run_validation(rt, "peer-closed", actor="test")
            steps = _by_step(run)
            assert steps["hl7-order"]["status"] == "passed", steps["hl7-order"]
            assert steps["hl7-report"]["status"] == "passed", steps["hl7-report"]
            assert run.status == "failed"  # the DICOM peer is closed
            [oru] = receiver.received()
            assert "ORU^R01" in oru and golive.TEST_PATIENT_ID in oru
            with rt.db.read_session() as s:  # the test order left no open read behind
                assert [o.status for o in s.scalars(select(Order))] == ["revoked"]
                assert [c.state for c in s.scalars(select(Case))] == ["cancelled"]
            receiver.answer = "AE"
            run = golive.run_validation(rt, "peer-closed", actor="test")
            assert _by_step(run)["hl7-report"]["status"] == "failed"
    finally:
        receiver.shutdown()
