"""The handoff stages of a case, as data.

A stage is an interval between two moments of a case: the first occurrence of
one of its ``start`` event kinds (or a study timestamp) and the first
occurrence of one of its ``end`` event kinds (or a study timestamp). Every
timestamp is the *first* one of its kind per case, so a case released and
claimed again still has one "first claim".
"""

from __future__ import annotations

from dataclasses import dataclass

#: Event kinds that mean "the read is final" (a signed final report, or a final without a report).
FINAL = ("report.final", "completed")
#: Event kinds that mean "a report was signed" (the first of them is when a result can be communicated).
SIGNED = ("report.preliminary", *FINAL)

#: Study columns a stage may start or end at (``archive.models.Study``).
STUDY_TIMESTAMPS = ("first_received_at", "complete_at")


@dataclass(frozen=True)
class Stage:
    """One handoff interval: from the first ``start`` moment to the first ``end`` moment of a case."""

    name: str
    description: str
    #: Case event kinds, the first of which starts the stage (empty when ``start_study`` is set).
    start: tuple[str, ...] = ()
    #: Case event kinds, the first of which ends the stage (empty when ``end_study`` is set).
    end: tuple[str, ...] = ()
    #: A study timestamp that starts / ends the stage instead of events (``STUDY_TIMESTAMPS``).
    start_study: str | None = None
    end_study: str | None = None
    #: Whether the stage ends in a report, so that ending after ``Case.deadline`` is an SLA breach.
    sla: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description,
                "start": [f"study.{self.start_study}"] if self.start_study else list(self.start),
                "end": [f"study.{self.end_study}"] if self.end_study else list(self.end), "sla": self.sla}


STAGES: tuple[Stage, ...] = (
    Stage("acquired_to_complete", "First instance received -> study complete (transfer)",
          start_study="first_received_at", end_study="complete_at"),
    Stage("complete_to_available", "Study complete -> case routed to readers (intake and routing)",
          start_study="complete_at", end=("routed",)),
    Stage("available_to_claim", "Routed -> first claim by a reader (wait in the worklist)",
          start=("routed",), end=("claimed",)),
    Stage("claim_to_preliminary", "First claim -> preliminary report signed (reading)",
          start=("claimed",), end=("report.preliminary",), sla=True),
    Stage("preliminary_to_final", "Preliminary report -> final report (or final without a report)",
          start=("report.preliminary",), end=FINAL, sla=True),
    Stage("available_to_final", "Routed -> final (the whole read turnaround)",
          start=("routed",), end=FINAL, sla=True),
    Stage("report_to_communicated", "First signed report -> critical result sent to the clinician",
          start=SIGNED, end=("critical.sent",)),
    Stage("communicated_to_acknowledged", "Critical result sent -> acknowledged by the clinician",
          start=("critical.sent",), end=("critical.acknowledged",)),
    Stage("consult_requested_to_answered", "Consult requested -> answered (both logged on the parent case)",
          start=("consult.requested",), end=("consult.answered",)),
    Stage("referral_received_to_accepted", "Referral received from the partner -> accepted by the receiving site",
          start=("referral.received",), end=("referral.accepted",)),
    Stage("referral_accepted_to_final", "Referral accepted -> final report of the referred case",
          start=("referral.accepted",), end=FINAL, sla=True),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    """The stage called ``name`` (KeyError with the known names otherwise)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(BY_NAME)}") from None
