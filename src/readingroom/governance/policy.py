"""The one place that answers "may this principal do this action?".

Deny by default: an action not listed for a role is refused. Every edge
(HTTP routes, DIMSE handlers, CLI) asks here instead of checking roles
itself. The governance issue extends this with site and case relationships.
"""

from __future__ import annotations

from readingroom.governance.auth import Principal

ARCHIVE_READ = "archive.read"
ARCHIVE_STORE = "archive.store"
ARCHIVE_ADMIN = "archive.admin"
PEERS_ADMIN = "peers.admin"
USERS_ADMIN = "users.admin"
WORKLIST_READ = "worklist.read"  # see and work one's own worklist
CASES_ADMIN = "cases.admin"  # network-wide view, reassign, cancel, reroute, exception queue
RULES_ADMIN = "rules.admin"  # replace routing rules
SITES_ADMIN = "sites.admin"  # sites and reader profiles
AI_FINDINGS = "ai.findings"  # post AI results for a study
AUDIT_READ = "audit.read"  # search and export the audit trail
AUDIT_REVIEW = "audit.review"  # close break-the-glass reviews
BREAK_GLASS = "access.break_glass"  # open a study outside one's relationships, with a reason
SHARES_CREATE = "shares.create"  # create / revoke share links to studies one may read
RETENTION_ADMIN = "retention.admin"  # retention rules, legal holds, purge runs

_ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({ARCHIVE_READ, ARCHIVE_STORE, ARCHIVE_ADMIN, PEERS_ADMIN, USERS_ADMIN, WORKLIST_READ,
                        CASES_ADMIN, RULES_ADMIN, SITES_ADMIN, AI_FINDINGS, AUDIT_READ, AUDIT_REVIEW,
                        SHARES_CREATE, RETENTION_ADMIN}),
    "site_admin": frozenset({ARCHIVE_READ, ARCHIVE_STORE, PEERS_ADMIN, CASES_ADMIN, WORKLIST_READ, USERS_ADMIN,
                             SHARES_CREATE, RETENTION_ADMIN}),
    "radiologist": frozenset({ARCHIVE_READ, ARCHIVE_STORE, WORKLIST_READ, BREAK_GLASS, SHARES_CREATE}),
    "technologist": frozenset({ARCHIVE_READ, ARCHIVE_STORE}),
    "referring_clinician": frozenset({ARCHIVE_READ, BREAK_GLASS, SHARES_CREATE}),
    "consultant": frozenset({ARCHIVE_READ}),
    "partner": frozenset({ARCHIVE_READ, ARCHIVE_STORE}),
    "auditor": frozenset({AUDIT_READ, AUDIT_REVIEW}),
    "modality": frozenset({ARCHIVE_STORE}),
    "ai_engine": frozenset({ARCHIVE_READ, AI_FINDINGS}),
}


def allowed(principal: Principal | None, action: str) -> bool:
    """Whether ``principal`` may perform ``action`` (False for anything unknown)."""
    if principal is None:
        return False
    return action in _ROLE_ACTIONS.get(principal.role, frozenset())


def actions_for_role(role: str) -> frozenset[str]:
    return _ROLE_ACTIONS.get(role, frozenset())
