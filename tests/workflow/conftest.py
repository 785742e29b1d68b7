"""Fixtures for the worklist: a small network (sites, readers) on a fresh database."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from readingroom.archive.ingest import ingest_path
from readingroom.archive.stability import complete_stable_studies
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_user
from readingroom.workflow.readers import set_reader
from tests.support.dicom import new_study

ALWAYS = ["Mon-Sun 00:00-23:59"]


@pytest.fixture()
def network(rt):
    """Two sites (hub in NY, spoke in IL) and three readers with different licences."""
    with rt.db.session() as s:
        hub = create_site(s, "HUB", "Riverside University Medical Center", timezone="America/New_York",
                          jurisdiction="US-NY", kind="hub")
        create_site(s, "LKS", "Lakeshore Regional Hospital", timezone="America/Chicago", jurisdiction="US-IL")
        for name in ("ann", "bob", "cat"):
            create_user(s, name, password="pw", role="radiologist", site_id=hub.id)
        create_user(s, "boss", password="pw", role="admin")
        set_reader(s, "ann", home_site="HUB", timezone="America/New_York", subspecialties=["neuro"],
                   shifts=ALWAYS, licences={"US-NY": None, "US-IL": None}, credentials={"HUB": None, "LKS": None})
        set_reader(s, "bob", home_site="HUB", timezone="America/New_York", subspecialties=["body"],
                   shifts=ALWAYS, licences={"US-NY": None}, credentials={"HUB": None})
        set_reader(s, "cat", home_site="LKS", timezone="America/Chicago", subspecialties=["body"],
                   shifts=ALWAYS, licences={"US-IL": date(2000, 1, 1)}, credentials={"LKS": None})
    return rt


def make_case(rt, tmp_path: Path, *, institution: str = "Riverside University Medical Center", n: int = 2,
              **changes) -> int:
    """Ingest a small study, complete it and run intake; returns the new case id."""
    from readingroom.workflow import jobs

    paths = new_study("CT_small.dcm", tmp_path / f"s{len(list(tmp_path.iterdir())) if tmp_path.exists() else 0}",
                      n, InstitutionName=institution, **changes)
    for p in paths:
        assert ingest_path(rt, p, actor="t").ok
    assert complete_stable_studies(rt, stable_age=0)
    created = jobs.intake(rt)
    assert len(created) == 1
    return created[0]
