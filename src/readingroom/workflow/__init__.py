"""Workflow: routing rules, reader eligibility and routing decisions (pure Python).

Nothing here imports the database or the web framework: the server maps its
rows onto these facts, the simulator builds them from a workload, and both
call the same :func:`route` with their own notion of "now".
"""

from readingroom.workflow.compiled import CompiledRules, RuleBook, compile_rules, priority_from_rules
from readingroom.workflow.decision import NO_ELIGIBLE_READER, UNKNOWN_SITE, EscalationPoint, RoutingDecision
from readingroom.workflow.eligibility import Exclusion
from readingroom.workflow.enums import EscalationAction, Mode, Priority, Reason, SiteKind
from readingroom.workflow.facts import CaseFacts, ReaderFacts, ReaderLoad, SiteFacts
from readingroom.workflow.routing import dry_run, route
from readingroom.workflow.rules import RulesDocument, RulesError, load_rules, validate_rules
from readingroom.workflow.shifts import Schedule, Shift

__all__ = [
    "NO_ELIGIBLE_READER",
    "UNKNOWN_SITE",
    "CaseFacts",
    "CompiledRules",
    "EscalationAction",
    "EscalationPoint",
    "Exclusion",
    "Mode",
    "Priority",
    "ReaderFacts",
    "ReaderLoad",
    "Reason",
    "RoutingDecision",
    "RuleBook",
    "RulesDocument",
    "RulesError",
    "Schedule",
    "Shift",
    "SiteFacts",
    "SiteKind",
    "compile_rules",
    "dry_run",
    "load_rules",
    "priority_from_rules",
    "route",
    "validate_rules",
]
