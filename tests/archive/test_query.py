"""The shared query engine: PS3.4 matching at every level."""

from __future__ import annotations

from pathlib import Path

import pytest

from readingroom.archive.ingest import ingest_path
from readingroom.archive.query import QueryError, keyword_to_tag, search
from tests.support.dicom import new_study


@pytest.fixture()
def loaded(rt, tmp_path: Path):
    specs = [
        ("CT_small.dcm", dict(PatientName="Müller^Jürgen", PatientID="P1", StudyDate="20200105", StudyTime="101500",
                              AccessionNumber="ACC1", Modality="CT", StudyDescription="CT HEAD")),
        ("CT_small.dcm", dict(PatientName="Müller^Jürgen", PatientID="P1", StudyDate="20210310", StudyTime="231000",
                              AccessionNumber="ACC2", Modality="CT", StudyDescription="CT CHEST")),
        ("MR_small.dcm", dict(PatientName="Doe^Jane", PatientID="P2", StudyDate="20211201", StudyTime="080000",
                              AccessionNumber="ACC3", Modality="MR", StudyDescription="MR BRAIN")),
    ]
    uids = []
    for i, (src, changes) in enumerate(specs):
        paths = new_study(src, tmp_path / str(i), 3, **changes)
        for p in paths:
            assert ingest_path(rt, p, actor="t").ok
        uids.append(__import__("pydicom").dcmread(paths[0]).StudyInstanceUID)
    return rt, uids


def _q(rt, level, filters, **kw):
    with rt.db.read_session() as s:
        return search(s, level, {keyword_to_tag(k): v for k, v in filters.items()}, **kw)


def test_levels_and_counts(loaded) -> None:
    rt, _uids = loaded
    assert len(_q(rt, "PATIENT", {})) == 2
    assert len(_q(rt, "STUDY", {})) == 3
    assert len(_q(rt, "SERIES", {})) == 3
    assert len(_q(rt, "IMAGE", {})) == 9
    p1 = _q(rt, "PATIENT", {"PatientID": "P1"})[0]
    assert p1["00201200"]["Value"] == [2] and p1["00201204"]["Value"] == [6]
    st = _q(rt, "STUDY", {"AccessionNumber": "ACC3"})[0]
    assert st["00201206"]["Value"] == [1] and st["00201208"]["Value"] == [3]
    assert st["00080061"]["Value"] == ["MR"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"PatientName": "müller*"}, 2),  # PN: case-insensitive
        ({"PatientName": "Doe^Jane"}, 1),
        ({"PatientName": "D?e*"}, 1),
        ({"PatientID": "P1"}, 2),
        ({"StudyDate": "20210101-20211231"}, 2),
        ({"StudyDate": "20210311-"}, 1),
        ({"StudyDate": "-20200105"}, 1),
        ({"StudyTime": "1000-1100"}, 1),
        ({"StudyTime": "2300-2359"}, 1),
        ({"ModalitiesInStudy": "MR"}, 1),
        ({"ModalitiesInStudy": "CT\\MR"}, 3),
        ({"StudyDescription": "CT*"}, 2),
        ({"StudyDescription": "ct*"}, 0),  # LO: case-sensitive
        ({"AccessionNumber": "ACC1\\ACC3"}, 2),
        ({"PatientSex": ""}, 3),  # universal
    ],
)
def test_study_matching(loaded, filters, expected) -> None:
    rt, _ = loaded
    assert len(_q(rt, "STUDY", filters)) == expected


def test_uid_list_and_scoping(loaded) -> None:
    rt, uids = loaded
    assert len(_q(rt, "STUDY", {"StudyInstanceUID": f"{uids[0]}\\{uids[2]}"})) == 2
    assert len(_q(rt, "STUDY", {"StudyInstanceUID": f"{uids[0]},{uids[1]}"})) == 2
    assert len(_q(rt, "SERIES", {}, study_uid=uids[1])) == 1
    assert len(_q(rt, "IMAGE", {"InstanceNumber": "2"}, study_uid=uids[1])) == 1
    assert len(_q(rt, "IMAGE", {"Modality": "MR"})) == 3


def test_attribute_without_column_is_post_filtered_and_paged(loaded) -> None:
    rt, _ = loaded
    # Rows and Columns are columns; SliceThickness is not (JSON post-filter).
    all_ct = _q(rt, "IMAGE", {"Modality": "CT"})
    thickness = all_ct[0].get("00180050")  # not in the instance-level attrs: only with include_all
    assert thickness is None
    ct = _q(rt, "IMAGE", {"Modality": "CT", "ImageType": "ORIGINAL*"})
    assert len(ct) == 6
    assert len(_q(rt, "IMAGE", {"Modality": "CT", "ImageType": "ORIGINAL*"}, limit=4, offset=4)) == 2


def test_paging_is_stable(loaded) -> None:
    rt, _ = loaded
    everything = [i["00080018"]["Value"][0] for i in _q(rt, "IMAGE", {})]
    pages = [i["00080018"]["Value"][0] for off in range(0, 9, 4) for i in _q(rt, "IMAGE", {}, limit=4, offset=off)]
    assert pages == everything


def test_fuzzy_person_name(loaded) -> None:
    rt, _ = loaded
    assert len(_q(rt, "STUDY", {"PatientName": "jane"}, fuzzy=True)) == 1
    assert len(_q(rt, "STUDY", {"PatientName": "jane"})) == 0


def test_bad_queries(loaded) -> None:
    rt, _ = loaded
    with pytest.raises(QueryError):
        _q(rt, "STUDY", {"StudyDate": "2020-2021"})
    with pytest.raises(QueryError):
        _q(rt, "NOPE", {})
    with pytest.raises(ValueError):
        keyword_to_tag("NotAKeyword")
