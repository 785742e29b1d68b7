"""Forwarding rules with a real Orthanc: C-STORE forwards arrive intact, STOW-RS to its DICOMweb, downtime mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from readingroom.archive.retrieve import find_instances
from readingroom.interop import forward_delivery, forwarding, outbox  # noqa: F401 - registers the handlers
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime
from tests.interop.forwarding_support import (
    ORTHANC_EXTRA,
    add_destination,
    dataset_sha256,
    ingest_complete,
    runtime,
    write_study,
)
from tests.interop.orthanc import OrthancInfo, orthanc
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(240)


def _ours(rt: Runtime, study_uid: str) -> dict[str, str]:
    with rt.db.read_session() as s:
        refs = find_instances(s, study_uid)
    out = {}
    for ref in refs:
        with rt.blobs.open(ref.blob_key) as fh:
            out[ref.sop_uid] = dataset_sha256(fh.read())
    return out


def _theirs(peer: OrthancInfo, study_uid: str) -> dict[str, str]:
    out = {}
    for inst in peer.study_instances(study_uid):
        uid = inst["MainDicomTags"]["SOPInstanceUID"]
        out[uid] = dataset_sha256(peer.get_bytes(f"/instances/{inst['ID']}/file"))
    return out


def test_rule_validation_refuses_bad_input(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt:
        add_destination(rt, "pacs", "dicom", peer=("PACS", "127.0.0.1", 104))
        add_destination(rt, "ris", "hl7")
        with rt.db.session() as s:
            for match, dest, why in (({"description": "(unclosed"}, "pacs", "regular expression"),
                                     ({"colour": "red"}, "pacs", "unknown match key"),
                                     ({"priority": "whenever"}, "pacs", "priority"),
                                     ({}, "ris", "kind 'hl7'"), ({}, "nowhere", "no destination")):
                with pytest.raises(forwarding.ForwardingError, match=why):
                    forwarding.create_rule(s, name="r", match=match, destination=dest)
            assert forwarding.list_rules(s) == []


def test_c_store_forward_arrives_intact_and_only_matching_rules_fire(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt, orthanc(tmp_path, extra=ORTHANC_EXTRA) as peer:
        add_destination(rt, "orthanc", "dicom", peer=(peer.aet, "127.0.0.1", peer.dicom_port))
        with rt.db.session() as s:
            forwarding.create_rule(s, name="ct-to-orthanc", match={"modality": "CT"}, destination="orthanc")
            forwarding.create_rule(s, name="mr-only", match={"modality": "MR", "description": ".*"},
                                   destination="orthanc")
        study_uid = ingest_complete(rt, write_study(tmp_path / "in", patient=1, days_ago=0, accession="FWD1"))
        assert forwarding.forward_completed(rt) == 1
        assert forwarding.forward_completed(rt) == 0  # the event is consumed once
        assert outbox.deliver_due(rt) == 1
        ours, theirs = _ours(rt, study_uid), _theirs(peer, study_uid)
        assert len(ours) == 3 and theirs == ours
        with rt.db.read_session() as s:
            status = forwarding.forwarding_status(s, study_uid)
        assert [(f["destination"], f["state"], f["result"]["sent"]) for f in status] == [("orthanc", "delivered", 3)]


def test_stow_forward_to_orthanc_dicomweb(tmp_path: Path) -> None:
    with runtime(tmp_path) as rt, orthanc(tmp_path, extra=ORTHANC_EXTRA) as peer:
        add_destination(rt, "orthanc-web", "dicomweb", url=f"{peer.base_url}/dicom-web")
        with rt.db.session() as s:
            forwarding.create_rule(s, name="all-web", match={}, destination="orthanc-web")
        study_uid = ingest_complete(rt, write_study(tmp_path / "in", patient=2, days_ago=0, accession="FWD2"))
        forwarding.forward_completed(rt)
        assert outbox.deliver_due(rt) == 1
        assert _theirs(peer, study_uid) == _ours(rt, study_uid)


def test_forward_waits_while_the_peer_is_down_and_is_delivered_when_it_returns(tmp_path: Path) -> None:
    port = free_port()
    with runtime(tmp_path) as rt:
        dest_id = add_destination(rt, "later", "dicom", peer=("ORTHANC", "127.0.0.1", port))
        study_uid = ingest_complete(rt, write_study(tmp_path / "in", patient=3, days_ago=0, accession="FWD3"))
        with rt.db.session() as s:
            item_id = forwarding.forward_now(s, study_uid, "later", actor="test").id
        assert outbox.deliver_due(rt) == 0
        with rt.db.read_session() as s:
            item, dest = s.get(OutboxItem, item_id), s.get(Destination, dest_id)
            assert item.state == "pending" and item.attempts == 1 and item.last_error
            assert dest.down_since is not None
        with orthanc(tmp_path, extra={**ORTHANC_EXTRA, "DicomPort": port}) as peer:
            with rt.db.session() as s:
                outbox.retry(s, item_id)  # due now instead of after the back-off
            assert outbox.deliver_due(rt) == 1
            assert _theirs(peer, study_uid) == _ours(rt, study_uid)
        with rt.db.read_session() as s:
            assert s.get(OutboxItem, item_id).state == "delivered"
            assert s.get(Destination, dest_id).down_since is None
            assert s.scalars(select(OutboxItem.state)).all() == ["delivered"]
