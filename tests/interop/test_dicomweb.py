"""DICOMweb against a real server: dicomweb-client for the happy paths, httpx for bad input.

Every test stores its own freshly-UID'd instances, so the shared server can
hold anything else; the bad-input tests run on a server of their own and
compare study/instance counts before and after.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError
from sqlalchemy import func, select

from readingroom.archive.models import Instance, Study
from readingroom.governance.models import AuditRecord
from readingroom.governance.users import create_token, create_user
from tests.interop import dcmtk
from tests.support.dicom import new_study, variant
from tests.support.servers import ServerInfo

EXPLICIT = "1.2.840.10008.1.2.1"
DICOM_MP = 'multipart/related; type="application/dicom"'


# -- helpers -------------------------------------------------------------------------------------------------


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart response (an independent, deliberately naive splitter)."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = re.search(r'boundary="?([^";]+)"?', ctype).group(1).encode()  # type: ignore[union-attr]
    pieces = (b"\r\n" + response.content).split(b"\r\n--" + boundary)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, _, content = piece[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if line)
        parts.append(({k.lower(): v for k, v in headers.items()}, content))
    return parts


def multipart_body(parts: list[bytes], boundary: str = "test-boundary") -> tuple[bytes, str]:
    """A STOW body of raw part bytes, exactly as given."""
    out = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                   for p in parts)
    return out + b"--" + boundary.encode() + b"--\r\n", f'{DICOM_MP}; boundary={boundary}'


def stow_raw(server: ServerInfo, parts: list[bytes], path: str = "/studies", **kw: Any) -> httpx.Response:
    body, ctype = multipart_body(parts)
    return httpx.post(server.dicomweb_url + path, content=body, timeout=60,
                      headers={**server.auth_headers, "Content-Type": ctype, **kw.pop("headers", {})}, **kw)


def encoded(ds: pydicom.Dataset) -> bytes:
    """The bytes dicomweb-client sends for a dataset."""
    with io.BytesIO() as b:
        pydicom.dcmwrite(b, ds)
        return b.getvalue()


def counts(server: ServerInfo) -> tuple[int, int]:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return s.scalar(select(func.count(Study.id))) or 0, s.scalar(select(func.count(Instance.id))) or 0
    finally:
        rt.close()


def fresh(tmp_path: Path, src: str, n: int = 1, **changes: Any) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in new_study(src, tmp_path / uuid.uuid4().hex, n, **changes)]


def same_study(first: pydicom.Dataset, tmp_path: Path, src: str, **changes: Any) -> pydicom.Dataset:
    """An instance of a test file moved into ``first``'s study (new series)."""
    out = variant(src, tmp_path / f"{uuid.uuid4().hex}.dcm", StudyInstanceUID=first.StudyInstanceUID,
                  SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid(), PatientID=first.PatientID,
                  PatientName=first.PatientName, **changes)
    return pydicom.dcmread(out)


@pytest.fixture(scope="module")
def client(server: ServerInfo) -> DICOMwebClient:
    return DICOMwebClient(url=server.dicomweb_url, headers=server.auth_headers)


@pytest.fixture(scope="module")
def http(server: ServerInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb_url, headers=server.auth_headers, timeout=60) as c:
        yield c


# -- STOW + WADO ---------------------------------------------------------------------------------------------


def test_stow_then_retrieve_returns_the_bytes_sent(client: DICOMwebClient, http: httpx.Client,
                                                   server: ServerInfo, tmp_path: Path) -> None:
    cts = fresh(tmp_path, "CT_small.dcm", 3, PatientID=f"RT-{uuid.uuid4().hex[:8]}")
    rle = same_study(cts[0], tmp_path, "MR_small_RLE.dcm")
    datasets = [*cts, rle]
    study = cts[0].StudyInstanceUID
    answer = client.store_instances(datasets)
    assert answer.RetrieveURL == f"{server.dicomweb_url}/studies/{study}"
    assert len(answer.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in answer
    assert answer.ReferencedSOPSequence[0].RetrieveURL.startswith(server.dicomweb_url + "/studies/")

    sent = {ds.SOPInstanceUID: encoded(ds) for ds in datasets}
    assert {ds.SOPInstanceUID for ds in client.retrieve_study(study)} == set(sent)
    response = http.get(f"/studies/{study}")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    parts = split_multipart(response)
    got = {pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID: body for _, body in parts}
    assert got == sent  # byte for byte
    assert all("transfer-syntax=" in h["content-type"] for h, _ in parts)

    series = client.retrieve_series(study, cts[0].SeriesInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(ds.SOPInstanceUID for ds in cts)
    one = http.get(f"/studies/{study}/series/{rle.SeriesInstanceUID}/instances/{rle.SOPInstanceUID}")
    assert [body for _, body in split_multipart(one)] == [sent[rle.SOPInstanceUID]]
    bare = http.get(f"/studies/{study}/series/{rle.SeriesInstanceUID}/instances/{rle.SOPInstanceUID}",
                    headers={"Accept": "application/dicom"})
    assert bare.headers["content-type"] == "application/dicom" and bare.content == sent[rle.SOPInstanceUID]

    # An explicit transfer syntax is honoured by transcoding; an impossible one is refused.
    ts_accept = f"{DICOM_MP}; transfer-syntax={EXPLICIT}"
    url = f"/studies/{study}/series/{rle.SeriesInstanceUID}/instances/{rle.SOPInstanceUID}"
    transcoded = http.get(url, headers={"Accept": ts_accept})
    back = pydicom.dcmread(io.BytesIO(split_multipart(transcoded)[0][1]))
    assert back.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(back.pixel_array, rle.pixel_array)
    refused = http.get(f"/studies/{study}", headers={"Accept": f"{DICOM_MP}; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert refused.status_code == 406 and "cannot be sent" in refused.json()["detail"]
    assert http.get(f"/studies/{generate_uid()}").status_code == 404


def test_demo_study_roundtrip_byte_exact(demo_files: list[Path], server: ServerInfo, http: httpx.Client) -> None:
    by_study: dict[Path, list[Path]] = {}
    for path in demo_files:
        by_study.setdefault(path.parent.parent, []).append(path)
    files = min(by_study.values(), key=lambda ps: sum(p.stat().st_size for p in ps))[:12]
    response = stow_raw(server, [p.read_bytes() for p in files])
    assert response.status_code == 200, response.text
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study = first.StudyInstanceUID
    found = http.get("/studies", params={"AccessionNumber": first.AccessionNumber}).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes() for p in files}
    series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files}
    got: dict[str, bytes] = {}
    for se in series:
        for _, body in split_multipart(http.get(f"/studies/{study}/series/{se}")):
            got[pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID] = body
    assert got == sent


def test_metadata_and_bulk_data(client: DICOMwebClient, http: httpx.Client, server: ServerInfo,
                                tmp_path: Path) -> None:
    (ct,) = fresh(tmp_path, "CT_small.dcm", 1)
    rle = same_study(ct, tmp_path, "SC_rgb_rle_2frame.dcm")
    client.store_instances([ct, rle])
    study = ct.StudyInstanceUID
    meta = client.retrieve_study_metadata(study)
    assert sorted(m["00080018"]["Value"][0] for m in meta) == sorted([ct.SOPInstanceUID, rle.SOPInstanceUID])
    assert "@@BASE@@" not in str(meta)
    assert len(client.retrieve_series_metadata(study, ct.SeriesInstanceUID)) == 1
    inst = client.retrieve_instance_metadata(study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    uri = inst["7FE00010"]["BulkDataURI"]
    assert uri.startswith(server.dicomweb_url + "/studies/")
    native = http.get(uri.removeprefix(server.dicomweb_url))
    (headers, pixels), = split_multipart(native)
    assert headers["content-type"].startswith("application/octet-stream") and pixels == ct.PixelData
    assert client.retrieve_bulkdata(uri) == [ct.PixelData]
    rle_meta = client.retrieve_instance_metadata(study, rle.SeriesInstanceUID, rle.SOPInstanceUID)
    frames = split_multipart(http.get(rle_meta["7FE00010"]["BulkDataURI"].removeprefix(server.dicomweb_url)))
    assert [body for _, body in frames] == list(generate_frames(rle.PixelData, number_of_frames=2))
    assert frames[0][0]["content-type"].startswith("image/x-dicom-rle; transfer-syntax=1.2.840.10008.1.2.5")
    assert http.get(f"/studies/{generate_uid()}/metadata").status_code == 404
    assert http.get(uri.rsplit("/", 1)[0] + "/00000000".removeprefix(server.dicomweb_url)).status_code == 404


# -- QIDO ------------------------------------------------------------------------------------------------------


def test_qido_matching_paging_and_fields(client: DICOMwebClient, http: httpx.Client, server: ServerInfo,
                                         tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    specs = [("CT_small.dcm", "20200105", "CT"), ("CT_small.dcm", "20210310", "CT"), ("MR_small.dcm", "20211201", "MR")]
    studies = []
    for i, (src, date, _modality) in enumerate(specs):
        dss = fresh(tmp_path, src, 2, PatientName=f"Q{tag}^Pat{i}", PatientID=f"Q{tag}-{i}", StudyDate=date,
                    AccessionNumber=f"A{tag}{i}", StudyDescription=f"DESC {tag}")
        client.store_instances(dss)
        studies.append(dss[0])
    uids = [ds.StudyInstanceUID for ds in studies]
    name = {"PatientName": f"Q{tag}*"}

    def found(**filters: str) -> list[str]:
        return sorted(r["0020000D"]["Value"][0] for r in client.search_for_studies(search_filters=filters))

    assert found(**name) == sorted(uids)
    assert found(**{"00100020": f"Q{tag}-1"}) == [uids[1]]
    assert found(**name, StudyDate="20210101-20211231") == sorted(uids[1:])
    assert found(**name, ModalitiesInStudy="MR") == [uids[2]]
    assert found(StudyInstanceUID=f"{uids[0]},{uids[2]}") == sorted([uids[0], uids[2]])
    assert found(StudyInstanceUID=f"{uids[0]}\\{uids[1]}") == sorted(uids[:2])
    assert found(PatientName=f"q{tag.lower()}^pat2", fuzzymatching="true") == [uids[2]]

    pages = [client.search_for_studies(search_filters=name, limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 1, 0]
    assert sorted(r["0020000D"]["Value"][0] for p in pages for r in p) == sorted(uids)
    study = client.search_for_studies(search_filters={"StudyInstanceUID": uids[2]})[0]
    assert study["00201208"]["Value"] == [2] and study["00080061"]["Value"] == ["MR"]
    assert study["00081190"]["Value"] == [f"{server.dicomweb_url}/studies/{uids[2]}"]

    assert len(client.search_for_series(uids[0])) == 1
    assert len(client.search_for_series(search_filters={"PatientID": f"Q{tag}-0"})) == 1
    series_uid = studies[0].SeriesInstanceUID
    inst = client.search_for_instances(uids[0], series_uid, fields=["PixelSpacing"])
    assert len(inst) == 2 and all("00280030" in i for i in inst)
    assert "00280030" not in client.search_for_instances(uids[0], series_uid)[0]
    everything = client.search_for_instances(uids[0], fields=["all"])
    assert "00181100" in everything[0] or len(everything[0]) > 30  # full header
    assert len(client.search_for_instances(search_filters={"AccessionNumber": f"A{tag}2"})) == 2

    assert client.search_for_studies(search_filters={"PatientID": f"nobody-{tag}"}) == []
    empty = http.get("/studies", params={"PatientID": f"nobody-{tag}"})
    assert empty.status_code == 200 and empty.json() == []
    bad = http.get("/studies", params={"NoSuchKeyword": "1"})
    assert bad.status_code == 400 and "NoSuchKeyword" in bad.json()["detail"]
    assert http.get("/studies", params={"limit": "-3"}).status_code == 400
    assert http.get("/studies", params={"StudyDate": "2020-2021"}).status_code == 400


# -- frames, rendered, thumbnails ------------------------------------------------------------------------------


def test_frames_native_and_compressed(client: DICOMwebClient, http: httpx.Client, tmp_path: Path) -> None:
    (dose,) = fresh(tmp_path, "rtdose.dcm", 1)
    rle = same_study(dose, tmp_path, "SC_rgb_rle_2frame.dcm")
    ct_path = variant("CT_small.dcm", tmp_path / "ct.dcm", StudyInstanceUID=dose.StudyInstanceUID,
                      SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    dcmtk.run("dcmcjpeg", str(ct_path), str(tmp_path / "ct-jpeg.dcm"))  # JPEG lossless (image/jpeg)
    jpeg = pydicom.dcmread(tmp_path / "ct-jpeg.dcm")
    client.store_instances([dose, rle, jpeg])
    study = dose.StudyInstanceUID

    frame_size = len(dose.PixelData) // int(dose.NumberOfFrames)
    got = client.retrieve_instance_frames(study, dose.SeriesInstanceUID, dose.SOPInstanceUID, [2, 15])
    assert got == [dose.PixelData[frame_size: 2 * frame_size], dose.PixelData[14 * frame_size:]]

    rle_frames = list(generate_frames(rle.PixelData, number_of_frames=2))
    assert client.retrieve_instance_frames(study, rle.SeriesInstanceUID, rle.SOPInstanceUID, [2],
                                           media_types=("image/x-dicom-rle",)) == [rle_frames[1]]
    decoded = client.retrieve_instance_frames(study, rle.SeriesInstanceUID, rle.SOPInstanceUID, [2],
                                              media_types=("application/octet-stream",))
    assert decoded == [rle.pixel_array[1].tobytes()]

    base = f"/studies/{study}/series/{jpeg.SeriesInstanceUID}/instances/{jpeg.SOPInstanceUID}"
    response = http.get(base + "/frames/1")
    ((headers, body),) = split_multipart(response)
    assert headers["content-type"] == f"image/jpeg; transfer-syntax={jpeg.file_meta.TransferSyntaxUID}"
    assert body == next(generate_frames(jpeg.PixelData, number_of_frames=1))
    wildcard = http.get(base + "/frames/1", headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert split_multipart(wildcard)[0][1] == body
    assert http.get(base + "/frames/2").status_code == 404
    assert http.get(base + "/frames/x").status_code == 400
    refused = http.get(base + "/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert refused.status_code == 406


def test_rendered_and_thumbnails(client: DICOMwebClient, http: httpx.Client, tmp_path: Path) -> None:
    cts = fresh(tmp_path, "CT_small.dcm", 3)
    rgb = same_study(cts[0], tmp_path, "SC_rgb_rle_2frame.dcm")
    client.store_instances([*cts, rgb])
    st, se, sop = cts[0].StudyInstanceUID, cts[0].SeriesInstanceUID, cts[0].SOPInstanceUID

    def image(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data))

    png = image(client.retrieve_instance_rendered(st, se, sop, media_types=("image/png",)))
    assert png.format == "PNG" and png.size == (128, 128) and png.mode == "L"
    small = image(client.retrieve_instance_rendered(st, se, sop, media_types=("image/jpeg",),
                                                    params={"viewport": "64,64", "quality": "70"}))
    assert small.format == "JPEG" and small.size == (64, 64)
    narrow = client.retrieve_instance_rendered(st, se, sop, media_types=("image/png",), params={"window": "40,80"})
    wide = client.retrieve_instance_rendered(st, se, sop, media_types=("image/png",),
                                             params={"window": "40,4000,linear"})
    assert np.asarray(image(narrow)).std() != np.asarray(image(wide)).std()
    frame2 = image(http.get(f"/studies/{st}/series/{rgb.SeriesInstanceUID}/instances/{rgb.SOPInstanceUID}"
                            "/frames/2/rendered", headers={"Accept": "image/png"}).content)
    assert frame2.mode == "RGB" and np.array_equal(np.asarray(frame2), rgb.pixel_array[1])
    series = http.get(f"/studies/{st}/series/{se}/rendered", headers={"Accept": 'multipart/related; type="image/png"'})
    assert len(split_multipart(series)) == 3
    assert image(client.retrieve_series_rendered(st, se, media_types=("image/jpeg",))).format == "JPEG"
    for path in (f"/studies/{st}", f"/studies/{st}/series/{se}", f"/studies/{st}/series/{se}/instances/{sop}",
                 f"/studies/{st}/series/{se}/instances/{sop}/frames/1"):
        thumb = http.get(path + "/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(image(thumb.content).size) <= 128
    instance = f"/studies/{st}/series/{se}/instances/{sop}"
    overridden = http.get(instance + "/rendered", params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert overridden.headers["content-type"] == "image/png"  # PS3.18 8.3.3.1: the query parameter wins
    assert http.get(instance + "/rendered", headers={"Accept": "image/gif"}).status_code == 406
    bad = http.get(instance + "/rendered", params={"window": "40"})
    assert bad.status_code == 400 and "window" in bad.json()["detail"]
    assert http.get(instance + "/rendered", params={"foo": "1"}).status_code == 400


# -- authentication, authorisation, audit ----------------------------------------------------------------------


def _user(server: ServerInfo, role: str) -> dict[str, str]:
    rt = server.runtime()
    try:
        with rt.db.session() as s:
            user = create_user(s, f"{role}-{uuid.uuid4().hex[:6]}", password="pw-123456789", role=role)
            _, token = create_token(s, user, name="dicomweb-test")
    finally:
        rt.close()
    return {"Authorization": f"Bearer {token}"}


def test_authentication_and_roles(server: ServerInfo, tmp_path: Path) -> None:
    (ct,) = fresh(tmp_path, "CT_small.dcm", 1)
    url = server.dicomweb_url
    body, ctype = multipart_body([encoded(ct)])
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        assert httpx.get(f"{url}/studies", headers=headers).status_code == 401
        assert httpx.get(f"{url}/studies/1.2.3/metadata", headers=headers).status_code == 401
        r = httpx.post(f"{url}/studies", content=body, headers={**headers, "Content-Type": ctype})
        assert r.status_code == 401 and r.json()["detail"]
    auditor, partner = _user(server, "auditor"), _user(server, "partner")
    assert httpx.get(f"{url}/studies", headers=auditor).status_code == 403
    assert httpx.post(f"{url}/studies", content=body, headers={**auditor, "Content-Type": ctype}).status_code == 403
    stored = httpx.post(f"{url}/studies", content=body, headers={**partner, "Content-Type": ctype})
    assert stored.status_code == 200
    # A partner may send studies but reads only what a grant (a referral) gives it: its own upload is
    # invisible to it, answered as if it did not exist, and absent from its searches.
    assert httpx.get(f"{url}/studies/{ct.StudyInstanceUID}", headers=partner).status_code == 404
    found = httpx.get(f"{url}/studies", params={"StudyInstanceUID": ct.StudyInstanceUID}, headers=partner)
    assert found.status_code in (200, 204) and not (found.content and found.json())


def test_reads_are_audited(client: DICOMwebClient, server: ServerInfo, tmp_path: Path) -> None:
    (ct,) = fresh(tmp_path, "CT_small.dcm", 1)
    client.store_instances([ct])
    study = ct.StudyInstanceUID
    client.retrieve_study(study)
    client.retrieve_study_metadata(study)
    client.search_for_series(study)
    wanted = {"study.retrieve", "study.metadata", "query"}
    rt = server.runtime()
    try:
        for _ in range(100):
            with rt.db.read_session() as s:
                rows = s.execute(select(AuditRecord.action, AuditRecord.actor, AuditRecord.detail)
                                 .where(AuditRecord.resource_id == study)).all()
            if wanted <= {r.action for r in rows}:
                break
            time.sleep(0.1)
    finally:
        rt.close()
    assert wanted <= {r.action for r in rows}
    assert all(r.actor == "admin" for r in rows)
    assert next(r.detail for r in rows if r.action == "query")["count"] == 1


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server(server_factory: Any) -> ServerInfo:
    return server_factory()


def test_bad_stow_input_is_refused_and_changes_nothing(own_server: ServerInfo, tmp_path: Path) -> None:
    srv = own_server
    (good,) = fresh(tmp_path, "CT_small.dcm", 1)
    good_bytes = encoded(good)
    assert stow_raw(srv, [good_bytes]).status_code == 200
    before = counts(srv)
    no_uid = encoded(pydicom.dcmread(variant("CT_small.dcm", tmp_path / "nouid.dcm", SOPInstanceUID=None)))
    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("cut in header", stow_raw(srv, [encoded(fresh(tmp_path, "CT_small.dcm")[0])[:2500]]), 409, "truncated"),
        ("cut in pixels", stow_raw(srv, [encoded(fresh(tmp_path, "CT_small.dcm")[0])[:20000]]), 409, "truncated"),
        ("text", stow_raw(srv, [b"hello, this is not DICOM\n" * 20]), 409, "not a DICOM"),
        ("no SOP UID", stow_raw(srv, [no_uid]), 409, "SOPInstanceUID"),
        ("empty part", stow_raw(srv, [b""]), 400, "empty"),
        ("json", httpx.post(srv.dicomweb_url + "/studies", json={"a": 1}, headers=srv.auth_headers), 415, "media"),
        ("dicom+json parts", httpx.post(srv.dicomweb_url + "/studies", content=b"[]", headers={
            **srv.auth_headers, "Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'}),
         415, "application/dicom"),
        ("no boundary", httpx.post(srv.dicomweb_url + "/studies", content=b"x", headers={
            **srv.auth_headers, "Content-Type": DICOM_MP}), 400, "boundary"),
        ("no parts", httpx.post(srv.dicomweb_url + "/studies", content=b"--b--\r\n", headers={
            **srv.auth_headers, "Content-Type": f"{DICOM_MP}; boundary=b"}), 400, "no parts"),
        ("cut body", httpx.post(srv.dicomweb_url + "/studies", content=multipart_body([good_bytes])[0][:-40],
                                headers={**srv.auth_headers, "Content-Type": f"{DICOM_MP}; boundary=test-boundary"}),
         400, "closing boundary"),
        ("wrong study", stow_raw(srv, [encoded(fresh(tmp_path, "CT_small.dcm")[0])],
                                 path=f"/studies/{good.StudyInstanceUID}"), 409, "does not match"),
    ]
    for label, response, status, reason in cases:
        assert response.status_code == status, (label, response.text)
        text = response.text + " ".join(response.headers.get_list("warning"))
        assert reason.lower() in text.lower(), (label, text)
        if status == 409:
            failed = response.json()["00081198"]["Value"][0]["00081197"]["Value"][0]
            assert failed == (0xA900 if label == "wrong study" else 0xC000), label
        assert httpx.get(srv.base_url + "/healthz").status_code == 200
    assert counts(srv) == before

    # Same UID, different bytes: accepted as a request, first copy kept, warning reported.
    changed = pydicom.dcmread(io.BytesIO(good_bytes))
    changed.StudyDescription = "CHANGED"
    conflict = stow_raw(srv, [encoded(changed)])
    assert conflict.status_code == 202
    assert conflict.json()["00081199"]["Value"][0]["00081196"]["Value"] == [0xB006]
    assert counts(srv) == before
    # Bad parts never keep good ones out.
    (other,) = fresh(tmp_path, "MR_small.dcm", 1)
    mixed = stow_raw(srv, [b"junk" * 100, encoded(other)])
    assert mixed.status_code == 202
    body = mixed.json()
    assert len(body["00081198"]["Value"]) == 1 and len(body["00081199"]["Value"]) == 1
    assert counts(srv) == (before[0] + 1, before[1] + 1)


def test_oversized_upload_is_refused(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(max_upload_bytes=60_000)
    (ct,) = fresh(tmp_path, "CT_small.dcm", 1)  # ~40 kB: fits
    big = fresh(tmp_path, "CT_small.dcm", 2)
    assert stow_raw(srv, [encoded(ct)]).status_code == 200
    before = counts(srv)
    declared = stow_raw(srv, [encoded(ds) for ds in big])
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    body, ctype = multipart_body([encoded(ds) for ds in big])

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for i in range(0, len(body), 8192):
            yield body[i: i + 8192]

    streamed = httpx.post(srv.dicomweb_url + "/studies", content=chunks(), timeout=60,
                          headers={**srv.auth_headers, "Content-Type": ctype})
    assert streamed.status_code == 413
    assert counts(srv) == before
    assert httpx.get(srv.base_url + "/healthz").status_code == 200


def test_store_errors_surface_in_dicomweb_client(client: DICOMwebClient, tmp_path: Path) -> None:
    (ct,) = fresh(tmp_path, "CT_small.dcm", 1)
    other = fresh(tmp_path, "CT_small.dcm", 1)[0]
    with pytest.raises(HTTPError) as err:
        client.store_instances([other], study_instance_uid=ct.StudyInstanceUID)
    assert err.value.response.status_code == 409
