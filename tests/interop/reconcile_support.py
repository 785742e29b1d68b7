"""Shared fixtures of the reconciliation and identity tests: two sites with issuers, studies, orders."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from readingroom.archive.ingest import ingest_path
from readingroom.archive.stability import complete_stable_studies
from readingroom.governance.models import Site
from readingroom.interop import orders, reconcile
from readingroom.interop.models import Order
from readingroom.workflow import jobs
from tests.support.dicom import new_study

HUB_NAME = "Riverside University Medical Center"
LKS_NAME = "Lakeshore Regional Hospital"


@pytest.fixture()
def sites(network: Any) -> Any:
    """The worklist's two-site network, each site with its own Issuer of Patient ID."""
    rt = network
    with rt.db.session() as s:
        for site in s.scalars(select(Site)).all():
            site.issuer_of_patient_id = {"HUB": "RIVERSIDE-MRN", "LKS": "LAKESHORE-MRN"}[site.code]
    return rt


@pytest.fixture()
def reconciling(sites: Any) -> Iterator[Any]:
    """Reconciliation hooks installed for one test (``serve`` installs them through wiring)."""
    reconcile.install(sites)
    try:
        yield sites
    finally:
        reconcile.uninstall()


def ingest_study(rt: Any, out: Path, *, n: int = 1, institution: str = HUB_NAME, study_uid: str | None = None,
                 **changes: Any) -> str:
    """Store ``n`` instances of a (new or given) study; returns its Study Instance UID."""
    uid = study_uid or generate_uid()
    changes.setdefault("PatientName", "Doe^Jane")
    changes.setdefault("PatientBirthDate", "19700101")
    changes.setdefault("PatientSex", "F")
    changes.setdefault("IssuerOfPatientID", None)
    for path in new_study("CT_small.dcm", out / generate_uid(), n, study_uid=uid, InstitutionName=institution,
                          **changes):
        result = ingest_path(rt, path, actor="test")
        assert result.ok, result.reason
    return uid


def complete_and_intake(rt: Any) -> list[int]:
    complete_stable_studies(rt, stable_age=0)
    return jobs.intake(rt)


def place(rt: Any, **fields: Any) -> Order:
    """Place an order through the orders service (as the HL7 and FHIR edges do)."""
    data = orders.OrderInput(**{"placer_order_number": generate_uid()[-12:], "site_code": "HUB",
                                "patient_name": "Doe^Jane", "birth_date": "19700101", "sex": "F",
                                "modality": "CT", **fields})
    with rt.db.session() as s:
        order = orders.place_order(s, data)
        s.flush()
        s.expunge(order)
    return order


def study_dt(value: datetime) -> dict[str, str]:
    """StudyDate / StudyTime attributes for a naive local time."""
    return {"StudyDate": value.strftime("%Y%m%d"), "StudyTime": value.strftime("%H%M%S")}
