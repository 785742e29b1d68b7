"""Study completeness: a study is complete once no instance arrived for a while.

DICOM has no "end of study" signal, so like every archive we infer it from a
quiet period (``stable_age_seconds``). The flip is one conditional UPDATE per
study, so with several processes polling each study completes exactly once,
and the ``study.complete`` domain event is written in that same transaction
for the worklist to consume.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from readingroom.archive.models import DomainEvent, Study
from readingroom.clock import utcnow
from readingroom.runtime import Runtime

STUDY_COMPLETE = "study.complete"


def complete_stable_studies(rt: Runtime, stable_age: float | None = None, limit: int = 500) -> list[str]:
    """Mark quiet studies complete; returns their Study Instance UIDs."""
    age = rt.settings.stable_age_seconds if stable_age is None else stable_age
    now = utcnow()
    cutoff = now - timedelta(seconds=age)
    done: list[str] = []
    with rt.db.read_session() as s:
        candidates = s.execute(
            select(Study.id, Study.study_uid, Study.last_received_at)
            .where(Study.state == "receiving", Study.last_received_at <= cutoff)
            .limit(limit)
        ).all()
    for study_pk, study_uid, last in candidates:
        with rt.db.session() as s:
            result = s.execute(
                update(Study)
                .where(Study.id == study_pk, Study.state == "receiving", Study.last_received_at == last)
                .values(state="complete", complete_at=now)
            )
            if result.rowcount != 1:
                continue  # another process did it, or a new instance just arrived
            row = s.get(Study, study_pk)
            assert row is not None
            s.add(DomainEvent(
                kind=STUDY_COMPLETE,
                subject=study_uid,
                payload={
                    "study_uid": study_uid,
                    "num_series": row.num_series,
                    "num_instances": row.num_instances,
                    "site_id": row.site_id,
                    "first_received_at": row.first_received_at.isoformat(),
                    "last_received_at": last.isoformat(),
                },
                created_at=now,
            ))
            done.append(study_uid)
    return done
