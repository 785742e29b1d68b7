"""A case being read, the people around it and an API client: shared by the report tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from readingroom.app import create_app
from readingroom.clock import FrozenClock, set_clock
from readingroom.governance import policy
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor, claim
from tests.workflow.conftest import make_case

REFERRER = "Hartmann^Lena"
PEOPLE = ("ann", "bob", "cat", "boss", "ref", "nosy", "tech")


@dataclass
class Desk:
    """The reading desk: ``case`` (CT head) claimed by ann; ``h`` holds a bearer header per person."""

    rt: Runtime
    c: TestClient
    case: int
    h: dict[str, dict[str, str]]
    clock: FrozenClock

    def url(self, suffix: str = "") -> str:
        return f"/api/v1/cases/{self.case}/report{suffix}"

    def get(self, who: str = "ann", suffix: str = "", **kw: Any) -> Any:
        return self.c.get(self.url(suffix), headers=self.h[who], **kw)

    def put(self, sections: dict[str, str], etag: str | None, who: str = "ann", **body: Any) -> Any:
        headers = {**self.h[who], **({"If-Match": etag} if etag is not None else {})}
        return self.c.put(self.url(), headers=headers, json={"sections": sections, **body})

    def sign(self, status: str, etag: str | None, who: str = "ann") -> Any:
        headers = {**self.h[who], **({"If-Match": etag} if etag is not None else {})}
        return self.c.post(self.url("/sign"), headers=headers, json={"status": status})

    def addendum(self, text: str, etag: str | None, who: str = "ann") -> Any:
        headers = {**self.h[who], **({"If-Match": etag} if etag is not None else {})}
        return self.c.post(self.url("/addenda"), headers=headers, json={"text": text})

    def tick(self, seconds: float = 1) -> None:
        self.clock.advance(timedelta(seconds=seconds))


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)
    policy.forget_decisions()


def make_desk(rt: Runtime, tmp_path: Path, clock: FrozenClock) -> Desk:
    case_id = make_case(rt, tmp_path / "case", PatientID="P-REPORT", PatientName="Doe^Jane",
                        PatientBirthDate="19700101", PatientSex="F", BodyPartExamined="HEAD",
                        StudyDescription="CT HEAD WO", AccessionNumber="ACC-REP-1",
                        ReferringPhysicianName=REFERRER)
    with rt.db.session() as s:
        hub = get_user(s, "ann").site_id
        ref = create_user(s, "ref", password="pw", role="referring_clinician", site_id=hub)
        ref.physician_name = REFERRER
        create_user(s, "nosy", password="pw", role="consultant")
        create_user(s, "tech", password="pw", role="technologist", site_id=hub)
        get_user(s, "ann").full_name = "Ann Reader, MD"
        claim(s, case_id, Actor("ann", get_user(s, "ann").id))
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"} for n in PEOPLE}
    return Desk(rt, TestClient(create_app(rt)), case_id, headers, clock)
