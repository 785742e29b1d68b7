"""Image annotations: server-side measurements on a synthetic CT, history, concurrency, access, DICOM export."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from sqlalchemy import select

from readingroom.app import create_app
from readingroom.archive.models import Instance, Series, Study
from readingroom.collab import annotations_measure as am
from readingroom.collab import live
from readingroom.collab.annotations_models import Annotation
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow.models import Case, CaseEvent
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)

ROWS = COLUMNS = 128
ROW_MM, COL_MM = 0.5, 0.8  # Pixel Spacing is (row spacing, column spacing)
SLOPE, INTERCEPT = 2.0, -1024.0
STORED = np.random.default_rng(5).integers(-500, 1500, size=(ROWS, COLUMNS), dtype=np.int16)
VALUES = STORED.astype(np.float64) * SLOPE + INTERCEPT  # what the Modality LUT gives (HU)


@pytest.fixture()
def env(network, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """A CT case at HUB with known pixels and spacing; readers, a technologist and an outsider, with tokens."""
    rt = network
    case_id = make_case(rt, tmp_path / "case", PixelData=STORED.tobytes(), PixelSpacing=[ROW_MM, COL_MM],
                        RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, PatientID="P-ANN")
    with rt.db.session() as s:
        case = s.get(Case, case_id)
        study = s.get(Study, case.study_pk)
        hub_id = study.site_id
        lks = create_user(s, "zed", password="pw", role="radiologist")
        lks.site_id = None
        create_user(s, "tech", password="pw", role="technologist", site_id=hub_id)
        row = s.execute(select(Instance.sop_uid, Series.series_uid).join(Series, Series.id == Instance.series_pk)
                        .where(Instance.study_pk == study.id).order_by(Instance.instance_number)).first()
        tokens = {name: create_token(s, get_user(s, name))[1] for name in ("ann", "bob", "boss", "zed", "tech")}
        study_uid = study.study_uid
    client = TestClient(create_app(rt))
    return {"rt": rt, "client": client, "case": case_id, "study": study_uid, "series": row.series_uid,
            "sop": row.sop_uid, "auth": {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}}


def _reader(env: dict[str, Any]) -> str:
    """A reader the case was routed to (and so may see it)."""
    rt = env["rt"]
    from readingroom.workflow.models import CaseCandidate

    with rt.db.read_session() as s:
        ids = set(s.scalars(select(CaseCandidate.user_id).where(CaseCandidate.case_id == env["case"])))
        names = [n for n in ("ann", "bob") if get_user(s, n).id in ids]
    assert names, "the case was routed to neither ann nor bob"
    return names[0]


def _post(env: dict[str, Any], user: str, kind: str, points: list[list[float]], **extra: Any) -> Any:
    body = {"series_uid": env["series"], "sop_uid": env["sop"], "kind": kind, "points": points, **extra}
    return env["client"].post(f"/api/v1/studies/{env['study']}/annotations", json=body, headers=env["auth"][user])


def _centres() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(COLUMNS) + 0.5, np.arange(ROWS) + 0.5)


def test_lengths_and_angles_use_pixel_spacing(env) -> None:
    user = _reader(env)
    r = _post(env, user, "line", [[0, 10], [100, 10]])
    assert r.status_code == 201, r.text
    m = r.json()["measurements"]
    assert m["length"] == pytest.approx(100 * COL_MM, rel=1e-12) and m["length_unit"] == "mm"
    assert m["spacing_source"] == "PixelSpacing"
    r = _post(env, user, "line", [[10, 20], [40, 60]])
    assert r.json()["measurements"]["length"] == pytest.approx(math.hypot(30 * COL_MM, 40 * ROW_MM), rel=1e-12)
    # An angle that is 45 degrees in pixels is not in millimetres when the spacing differs per axis.
    r = _post(env, user, "angle", [[90, 10], [50, 50], [90, 50]])
    arm1, arm2 = np.array([40 * COL_MM, -40 * ROW_MM]), np.array([40 * COL_MM, 0.0])
    expected = math.degrees(math.acos(arm1 @ arm2 / (np.linalg.norm(arm1) * np.linalg.norm(arm2))))
    assert r.json()["measurements"]["angle"] == pytest.approx(expected, rel=1e-12)
    assert abs(expected - 45) > 5


def test_roi_statistics_equal_numpy_on_the_same_mask_with_rescale(env) -> None:
    user = _reader(env)
    x, y = _centres()
    r = _post(env, user, "rectangle", [[50.2, 45.0], [10.0, 20.7]], label="liver")
    assert r.status_code == 201, r.text
    m = r.json()["measurements"]
    inside = VALUES[(x >= 10.0) & (x <= 50.2) & (y >= 20.7) & (y <= 45.0)]
    assert m["pixel_count"] == inside.size == 40 * 24
    assert m["mean"] == pytest.approx(inside.mean(), rel=1e-12)
    assert m["sd"] == pytest.approx(inside.std(), rel=1e-12)
    assert (m["min"], m["max"]) == (inside.min(), inside.max())
    assert m["area"] == pytest.approx(40.2 * 24.3 * ROW_MM * COL_MM, rel=1e-12)
    assert m["area_unit"] == "mm2" and m["value_unit"] == "HU"
    assert m["min"] < 0  # rescaled: stored values are >= -500, HU = 2 * stored - 1024

    r = _post(env, user, "ellipse", [[20, 64], [100, 64], [60, 44], [60, 84]])
    assert r.status_code == 201, r.text
    m = r.json()["measurements"]
    inside = VALUES[((x - 60) / 40) ** 2 + ((y - 64) / 20) ** 2 <= 1]
    assert m["pixel_count"] == inside.size
    assert m["mean"] == pytest.approx(inside.mean(), rel=1e-12)
    assert m["sd"] == pytest.approx(inside.std(), rel=1e-12)
    assert m["area"] == pytest.approx(math.pi * 40 * 20 * ROW_MM * COL_MM, rel=1e-12)

    r = _post(env, user, "point", [[5.5, 7.2]])
    assert r.json()["measurements"]["value"] == VALUES[7, 5]


def test_calibration_imager_spacing_and_none() -> None:
    ds = Dataset()
    ds.Modality, ds.ImagerPixelSpacing = "CR", [0.2, 0.2]
    cal = am.calibration(ds, 1)
    assert cal.spacing_source == "ImagerPixelSpacing"
    m = am.measure("line", [[0, 0], [10, 0]], cal, None)
    assert m["length"] == pytest.approx(2.0) and m["notes"] == [am.IMAGER_NOTE]
    bare = am.calibration(Dataset(), 1)
    m = am.measure("line", [[0, 0], [3, 4]], bare, None)
    assert (m["length"], m["length_unit"], m["notes"]) == (5.0, "px", [am.NO_SPACING_NOTE])


def test_edits_keep_history_and_stale_versions_are_refused(env) -> None:
    user, client, auth = _reader(env), env["client"], env["auth"]
    created = _post(env, user, "line", [[0, 0], [10, 0]]).json()
    aid = created["id"]
    r = client.put(f"/api/v1/annotations/{aid}", json={"version": 1, "points": [[0, 0], [20, 0]]},
                   headers=auth[user])
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["measurements"]["length"] == pytest.approx(20 * COL_MM)
    etag = r.headers["ETag"]
    # Someone still holding version 1: refused, nothing changes.
    stale = client.put(f"/api/v1/annotations/{aid}", json={"version": 1, "label": "late"}, headers=auth["boss"])
    assert stale.status_code in (403, 409)
    stale = client.put(f"/api/v1/annotations/{aid}", json={"version": 1, "label": "late"}, headers=auth[user])
    assert stale.status_code == 409, stale.text
    stale = client.put(f"/api/v1/annotations/{aid}", json={"label": "late"},
                       headers={**auth[user], "If-Match": f'"annotation-{aid}-v1"'})
    assert stale.status_code == 412, stale.text
    ok = client.put(f"/api/v1/annotations/{aid}", json={"label": "aorta"}, headers={**auth[user], "If-Match": etag})
    assert ok.status_code == 200 and ok.json()["version"] == 3 and ok.json()["label"] == "aorta"
    gone = client.delete(f"/api/v1/annotations/{aid}", params={"version": 3}, headers=auth[user])
    assert gone.status_code == 200 and gone.json()["deleted"]
    history = client.get(f"/api/v1/annotations/{aid}/history", headers=auth[user]).json()
    assert [(h["version"], h["action"]) for h in history] == [(1, "created"), (2, "edited"), (3, "edited"),
                                                             (4, "deleted")]
    assert history[0]["measurements"]["length"] == pytest.approx(10 * COL_MM)
    assert client.get(f"/api/v1/studies/{env['study']}/annotations", headers=auth[user]).json() == []
    with env["rt"].db.read_session() as s:
        kinds = list(s.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == env["case"],
                                                            CaseEvent.kind.like("annotation%"))
                               .order_by(CaseEvent.id)))
    assert kinds == ["annotation_added", "annotation_changed", "annotation_changed", "annotation_deleted"]
    events = [e for e in live.hub(env["rt"]).since(0) if e.kind.startswith("annotation.")]
    assert [e.kind for e in events] == ["annotation.added", "annotation.changed", "annotation.changed",
                                        "annotation.deleted"]
    assert all(e.case_id == env["case"] and e.data["annotation_id"] == aid for e in events)


def test_invalid_geometry_gets_reasons_and_stores_nothing(env) -> None:
    user = _reader(env)
    r = _post(env, user, "line", [[0, 0], [200, 5]])
    assert r.status_code == 422 and "outside the image" in str(r.json()["detail"])
    r = _post(env, user, "ellipse", [[20, 64], [100, 64], [60, 44], [70, 84]])
    assert r.status_code == 422 and "perpendicular" in str(r.json()["detail"])
    r = _post(env, user, "line", [[0, 0], [5, 5]], frame=2)
    assert r.status_code == 422 and "frame 2 does not exist" in str(r.json()["detail"])
    r = _post(env, user, "text", [[5, 5]])
    assert r.status_code == 422 and "needs a label" in str(r.json()["detail"])
    r = _post(env, user, "polygon", [[5, 5]])
    assert r.status_code == 422
    r = _post(env, user, "line", [[0, 0], [5, 5]], sop_uid="1.2.3.4")
    assert r.status_code == 404
    with env["rt"].db.read_session() as s:
        assert s.scalar(select(Annotation.id)) is None


def test_who_may_read_and_write(env) -> None:
    user, client, auth = _reader(env), env["client"], env["auth"]
    aid = _post(env, user, "arrow", [[5, 5], [30, 30]], label="look").json()["id"]
    url = f"/api/v1/studies/{env['study']}/annotations"
    # Someone without any relationship to the study: as if it did not exist.
    assert client.get(url, headers=auth["zed"]).status_code == 404
    assert client.get(f"/api/v1/annotations/{aid}", headers=auth["zed"]).status_code == 404
    assert _post(env, "zed", "point", [[1, 1]]).status_code == 404
    assert client.put(f"/api/v1/annotations/{aid}", json={"version": 1, "label": "x"},
                      headers=auth["zed"]).status_code == 404
    # The site's technologist reads the study's annotations but may not annotate.
    listed = client.get(url, headers=auth["tech"])
    assert listed.status_code == 200 and [a["id"] for a in listed.json()] == [aid]
    assert _post(env, "tech", "point", [[1, 1]]).status_code == 403
    assert client.get(url, headers={}).status_code == 401


def _dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_gsps_export_references_the_annotated_instance(env) -> None:
    user, client, auth = _reader(env), env["client"], env["auth"]
    ids = [_post(env, user, "line", [[0, 10], [100, 10]]).json()["id"],
           _post(env, user, "rectangle", [[10, 10], [20, 30]]).json()["id"],
           _post(env, user, "text", [[40, 40]], label="see prior").json()["id"]]
    r = client.post(f"/api/v1/studies/{env['study']}/annotations/export", json={"format": "gsps"},
                    headers=auth[user])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    ds = _dataset(r.content)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1" and ds.StudyInstanceUID == env["study"]
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == env["series"]
    assert [i.ReferencedSOPInstanceUID for i in ref.ReferencedImageSequence] == [env["sop"]]
    (annotation,) = ds.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == env["sop"]
    graphics = {(g.GraphicType, g.NumberOfGraphicPoints) for g in annotation.GraphicObjectSequence}
    assert graphics == {("POLYLINE", 2), ("POLYLINE", 5)}
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert "80.0 mm" in texts and "see prior" in texts
    assert len(ids) == 3
    # Not stored unless asked.
    with env["rt"].db.read_session() as s:
        assert s.scalar(select(Instance.id).where(Instance.sop_uid == ds.SOPInstanceUID)) is None


def _content_items(ds: Dataset) -> list[Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_content_items(item))
    return out


def test_sr_export_is_stored_and_found_by_qido(env) -> None:
    user, client, auth = _reader(env), env["client"], env["auth"]
    _post(env, user, "line", [[0, 10], [100, 10]])
    ellipse = _post(env, user, "ellipse", [[20, 64], [100, 64], [60, 44], [60, 84]]).json()
    r = client.post(f"/api/v1/studies/{env['study']}/annotations/export", json={"format": "sr", "store": True},
                    headers=auth[user])
    assert r.status_code == 200, r.text
    ds = _dataset(r.content)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and ds.StudyInstanceUID == env["study"]
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == env["sop"]
    numbers: dict[str, list[float]] = {}
    for item in _content_items(ds):
        if item.ValueType == "NUM":
            numbers.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(
                float(item.MeasuredValueSequence[0].NumericValue))
    assert numbers["Length"] == [pytest.approx(80.0)]
    assert numbers["Mean"] == [pytest.approx(ellipse["measurements"]["mean"], rel=1e-9)]
    assert numbers["Area"] == [pytest.approx(ellipse["measurements"]["area"], rel=1e-9)]
    images = [i for i in _content_items(ds) if i.ValueType == "IMAGE"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images} == {env["sop"]}
    assert r.headers["Content-Location"].endswith(f"/instances/{ds.SOPInstanceUID}")
    found = client.get(f"/dicomweb/studies/{env['study']}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID},
                       headers=auth[user])
    assert found.status_code == 200, found.text
    assert [i["00080018"]["Value"][0] for i in found.json()] == [ds.SOPInstanceUID]
    # A technologist may export but not store.
    r = client.post(f"/api/v1/studies/{env['study']}/annotations/export", json={"format": "gsps", "store": True},
                    headers=auth["tech"])
    assert r.status_code == 403
