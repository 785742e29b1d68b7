"""Small builders for routing tests: a network of sites, readers that pass every check, rules text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from readingroom.workflow import CaseFacts, ReaderFacts, SiteFacts, compile_rules, load_rules
from readingroom.workflow.compiled import CompiledRules

SITES: dict[str, SiteFacts] = {
    "H1": SiteFacts("H1", "America/New_York", "US-PA", "hub"),
    "S2": SiteFacts("S2", "America/New_York", "US-NJ", "spoke", residency_tag="US"),
    "S5": SiteFacts("S5", "America/Los_Angeles", "US-CA", "spoke"),
}
ALL_JURISDICTIONS = {"US-PA": None, "US-NJ": None, "US-CA": None}
ALL_CREDENTIALS = {"H1": None, "S2": None, "S5": None}
# Monday 13 January 2025, 15:00 UTC = 10:00 in New York: day shift everywhere in the US east.
MONDAY_10_NY = datetime(2025, 1, 13, 15, 0, tzinfo=UTC)


def reader(username: str, **overrides: Any) -> ReaderFacts:
    """A reader who passes every check at H1 around the clock unless ``overrides`` say otherwise."""
    fields: dict[str, Any] = {
        "home_site": "H1",
        "timezone": "America/New_York",
        "subspecialties": frozenset({"general"}),
        "licences": dict(ALL_JURISDICTIONS),
        "credentials": dict(ALL_CREDENTIALS),
        "shifts": ("daily 00:00-24:00",),
        "residency_tags": frozenset({"US"}),
    }
    fields.update(overrides)
    return ReaderFacts(username, **fields)


def case(**overrides: Any) -> CaseFacts:
    """A routine CT abdomen at H1 that became ready 5 minutes before :data:`MONDAY_10_NY`."""
    fields: dict[str, Any] = {
        "case_id": "C1",
        "site": "H1",
        "modality": "CT",
        "ready_at": datetime(2025, 1, 13, 14, 55, tzinfo=UTC),
        "body_part": "ABDOMEN",
        "description": "CT abdomen pelvis with contrast",
        "priority": "routine",
        "rvu": 1.3,
    }
    fields.update(overrides)
    return CaseFacts(**fields)


def rules(text: str) -> CompiledRules:
    return compile_rules(load_rules(text))


BASIC_RULES = """
version: 1
name: test
defaults:
  mode: push
rules:
  - id: neuro
    match: {modality: [CT, MR], body_part: [HEAD, BRAIN]}
    actions: {subspecialty: neuro}
  - id: mammo
    match: {modality: MG}
    actions: {subspecialty: breast, qualifications: MQSA}
"""
