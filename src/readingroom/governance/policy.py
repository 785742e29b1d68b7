"""The one place that answers "may this principal do this action?".

Deny by default: an action not listed for a role is refused, and a study is
visible only through a relationship the model names (site membership, a case
routed to the reader, an order naming the clinician, an access grant). Every
edge (HTTP routes, DICOMweb, worklists, share links) asks here instead of
checking roles itself: ``allowed`` for actions, ``visible_studies`` /
``can_read_study`` / ``can_see_case`` for resources.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from readingroom.clock import utcnow
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
# Collaboration (always together with a relationship to the case: ``can_see_case``).
REPORTS_WRITE = "reports.write"  # draft and edit reports, flag critical findings
REPORTS_SIGN = "reports.sign"  # sign preliminary / final reports and addenda
CRITICAL_ACK = "critical.ack"  # acknowledge a critical result as the clinician (or delegate)
CONSULTS_REQUEST = "consults.request"  # ask for a consult or second opinion on a case
CONSULTS_ANSWER = "consults.answer"  # answer a consult one was asked
COMMENTS_WRITE = "comments.write"  # comment on cases one can see
ANNOTATIONS_WRITE = "annotations.write"  # measure and annotate images of cases one can see
CONFERENCES_MANAGE = "conferences.manage"  # create tumour boards / MDT sessions, record decisions
REFERRALS_SUBMIT = "referrals.submit"  # a partner sends a referral
REFERRALS_MANAGE = "referrals.manage"  # accept / decline referrals addressed to one's site
PEER_REVIEW_ADMIN = "peer_review.admin"  # sampling and results of peer review
INTEROP_ADMIN = "interop.admin"  # destinations, outbox, interop health (site admins: their sites' only)
ORDERS_WRITE = "orders.write"  # place, change, cancel imaging orders (REST, FHIR ServiceRequest) at one's sites
ANALYTICS_READ = "analytics.read"  # turnaround analytics and exports (site admins: their sites' cases only)

_ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({ARCHIVE_READ, ARCHIVE_STORE, ARCHIVE_ADMIN, PEERS_ADMIN, USERS_ADMIN, WORKLIST_READ,
                        CASES_ADMIN, RULES_ADMIN, SITES_ADMIN, AI_FINDINGS, AUDIT_READ, AUDIT_REVIEW,
                        SHARES_CREATE, RETENTION_ADMIN, COMMENTS_WRITE, CONFERENCES_MANAGE, REFERRALS_MANAGE,
                        PEER_REVIEW_ADMIN, CONSULTS_REQUEST, INTEROP_ADMIN, ORDERS_WRITE, ANALYTICS_READ}),
    "site_admin": frozenset({ARCHIVE_READ, ARCHIVE_STORE, PEERS_ADMIN, CASES_ADMIN, WORKLIST_READ, USERS_ADMIN,
                             SHARES_CREATE, RETENTION_ADMIN, COMMENTS_WRITE, CONFERENCES_MANAGE, REFERRALS_MANAGE,
                             PEER_REVIEW_ADMIN, CONSULTS_REQUEST, INTEROP_ADMIN, ORDERS_WRITE, ANALYTICS_READ}),
    "radiologist": frozenset({ARCHIVE_READ, ARCHIVE_STORE, WORKLIST_READ, BREAK_GLASS, SHARES_CREATE,
                              REPORTS_WRITE, REPORTS_SIGN, CONSULTS_REQUEST, CONSULTS_ANSWER, COMMENTS_WRITE,
                              ANNOTATIONS_WRITE, CONFERENCES_MANAGE}),
    "technologist": frozenset({ARCHIVE_READ, ARCHIVE_STORE, COMMENTS_WRITE}),
    "referring_clinician": frozenset({ARCHIVE_READ, BREAK_GLASS, SHARES_CREATE, CRITICAL_ACK, CONSULTS_REQUEST,
                                      COMMENTS_WRITE, ORDERS_WRITE}),
    "consultant": frozenset({ARCHIVE_READ, CONSULTS_ANSWER, COMMENTS_WRITE, ANNOTATIONS_WRITE}),
    "partner": frozenset({ARCHIVE_READ, ARCHIVE_STORE, REFERRALS_SUBMIT, COMMENTS_WRITE}),
    "auditor": frozenset({AUDIT_READ, AUDIT_REVIEW}),
    "modality": frozenset({ARCHIVE_STORE}),
    "ai_engine": frozenset({ARCHIVE_READ, AI_FINDINGS}),
}


# -- role checks, per site ------------------------------------------------------------------------------------


_ANYWHERE = object()


def _roles(principal: Principal, site_id: int | object | None) -> frozenset[str]:
    if site_id is _ANYWHERE:
        return frozenset({principal.role, *(role for _, role in principal.site_roles)})
    return principal.roles_at(site_id)  # type: ignore[arg-type]



def allowed(principal: Principal | None, action: str, site_id: int | object | None = _ANYWHERE) -> bool:
    """Whether ``principal`` may perform ``action`` (False for anything unknown).

    Without ``site_id`` the question is "anywhere": the route-level gate, so a
    radiologist who is site admin at one hospital reaches the site-admin
    routes, which then ask again with the resource's site. A scoped token
    narrows the answer to its scopes whatever the role allows.
    """
    if principal is None:
        return False
    if principal.scopes is not None and action not in principal.scopes:
        return False
    return any(action in _ROLE_ACTIONS.get(role, frozenset()) for role in _roles(principal, site_id))


def _role_allows(principal: Principal, action: str) -> bool:
    """Whether any of the principal's roles carries ``action``, ignoring token scopes (for relationships)."""
    return any(action in _ROLE_ACTIONS.get(role, frozenset()) for role in _roles(principal, _ANYWHERE))


def peer_allowed(trusted: bool, peer: Any, service: str) -> bool:
    """Whether a DICOM caller may use a DIMSE service (``store``, ``query``, ``retrieve``).

    Peers are systems, not people: the association was accepted by AE title
    and address (and TLS certificate); what it may do is the registered
    peer's flags. A caller let in by the open-door settings
    (``accept_unknown_aets`` / ``accept_loopback_aets``) and not registered
    may use every service, which is why those settings are for demos and
    closed networks. A caller no longer trusted may do nothing.
    """
    if not trusted:
        return False
    if peer is None:
        return True
    flags = {"store": peer.allow_store, "query": peer.allow_query, "retrieve": peer.allow_retrieve}
    return bool(flags.get(service, False))


def actions_for_role(role: str) -> frozenset[str]:
    return _ROLE_ACTIONS.get(role, frozenset())


def sites_where(principal: Principal, action: str) -> frozenset[int] | None:
    """Sites at which ``principal`` may do ``action`` (None: every site, for network-wide roles)."""
    if principal.scopes is not None and action not in principal.scopes:
        return frozenset()
    if action in _ROLE_ACTIONS.get(principal.role, frozenset()) and principal.role in NETWORK_ROLES:
        return None
    return frozenset(site for site in principal.site_ids if allowed(principal, action, site))


# -- relationships: which studies and cases a principal may see ----------------------------------------------

#: Roles that see the whole network's studies (administration, automated readers of every study).
NETWORK_ROLES = frozenset({"admin", "ai_engine"})
#: Roles that see every study of the sites they belong to. Radiologists are not among them: they see
#: what is routed to them (and those patients' priors) or granted, and break the glass otherwise.
SITE_WIDE_READ_ROLES = frozenset({"admin", "site_admin", "technologist"})


def physician_key(name: str) -> str:
    """``family^given`` of a DICOM/HL7 person name, lower-cased: the part that identifies the physician.

    Orders and modalities write the same doctor as ``Hartmann^Lena``,
    ``HARTMANN^LENA^^Dr.`` or with an ideographic group after ``=``; the
    account's name must match all of them but not ``Hartmann^Lenore``.
    """
    alphabetic = (name or "").split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")[:2]]
    return "^".join(parts).strip("^").lower()


def names_physician(column: Any, name: str) -> ColumnElement[bool]:
    """SQL: ``column`` (a PN value) names the same physician as ``name`` (see ``physician_key``)."""
    key = physician_key(name)
    value = func.lower(column)
    if "^" not in key:  # a family name alone would name every namesake: only an exact match counts
        return value == key
    escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(value == key, value.like(escaped + "^%", escape="\\"), value.like(escaped + "=%", escape="\\"))


def _active_grants(principal: Principal) -> Any:
    from readingroom.governance.models import AccessGrant

    now = utcnow()
    return (AccessGrant.user_id == principal.user_id, AccessGrant.revoked_at.is_(None),
            or_(AccessGrant.expires_at.is_(None), AccessGrant.expires_at > now))


def visible_studies(principal: Principal) -> ColumnElement[bool] | None:
    """SQL condition on ``Study`` for the studies ``principal`` may read; None means every study.

    The relationships of the governance model, as one clause the query can
    use (QIDO, C-FIND, worklists and single-study checks share it):

    * network roles (admin, AI engines) read everything;
    * site admins and technologists read their sites' studies;
    * a reader reads the studies of cases routed to them (candidate,
      assignee or claimer) and those patients' other studies (priors);
    * a referring clinician reads the studies that name them as referring
      or ordering physician;
    * anyone reads what an active access grant gives them (consults,
      referrals, conferences, break-the-glass), with the patient's priors
      when the grant says so.
    """
    from readingroom.archive.models import Study
    from readingroom.governance.models import AccessGrant
    from readingroom.workflow.models import Case, CaseCandidate

    if not allowed(principal, ARCHIVE_READ):
        return false()
    if principal.role in NETWORK_ROLES:
        return None
    conditions: list[ColumnElement[bool]] = []
    sites = [s for s in principal.site_ids if principal.roles_at(s) & SITE_WIDE_READ_ROLES]
    if sites:
        conditions.append(Study.site_id.in_(sites))
    if _role_allows(principal, WORKLIST_READ):  # a relationship of the person, whatever the token's scope
        routed = or_(Case.assignee == principal.user_id, Case.claimed_by == principal.user_id,
                     Case.id.in_(select(CaseCandidate.case_id).where(CaseCandidate.user_id == principal.user_id)))
        conditions.append(Study.id.in_(select(Case.study_pk).where(routed, Case.study_pk.is_not(None))))
        conditions.append(Study.patient_pk.in_(select(Case.patient_pk).where(routed, Case.patient_pk.is_not(None))))
    if physician_key(principal.physician_name):
        conditions.append(names_physician(Study.referring_physician, principal.physician_name))
        conditions.append(Study.id.in_(select(Case.study_pk).where(
            names_physician(Case.ordering_physician, principal.physician_name), Case.study_pk.is_not(None))))
    grants = _active_grants(principal)
    granted_uid = select(AccessGrant.study_uid).where(*grants, AccessGrant.study_uid != "")
    granted_case = select(AccessGrant.case_id).where(*grants, AccessGrant.case_id.is_not(None))
    conditions.append(Study.study_uid.in_(granted_uid))
    conditions.append(Study.id.in_(select(Case.study_pk).where(Case.id.in_(granted_case))))
    prior_uid = select(AccessGrant.study_uid).where(*grants, AccessGrant.include_priors, AccessGrant.study_uid != "")
    prior_case = select(AccessGrant.case_id).where(*grants, AccessGrant.include_priors,
                                                   AccessGrant.case_id.is_not(None))
    study_alias = aliased(Study)
    conditions.append(Study.patient_pk.in_(
        select(study_alias.patient_pk).where(study_alias.study_uid.in_(prior_uid))))
    conditions.append(Study.patient_pk.in_(select(Case.patient_pk).where(Case.id.in_(prior_case))))
    return or_(*conditions)


_study_cache: dict[tuple[Principal, str], tuple[float, bool]] = {}
_study_cache_lock = threading.Lock()
#: Seconds a positive or negative single-study answer is reused: a viewer fetches hundreds of frames of a
#: study it opened, and the answer cannot change faster than a grant is created or revoked by a person.
STUDY_DECISION_SECONDS = 5.0


def can_read_study(session: Session, principal: Principal | None, study_uid: str) -> bool:
    """Whether ``principal`` may read the study (False also when the study does not exist)."""
    from readingroom.archive.models import Study

    if principal is None or not allowed(principal, ARCHIVE_READ):
        return False
    key, now = (principal, study_uid), time.monotonic()
    with _study_cache_lock:
        hit = _study_cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
    clause = visible_studies(principal)
    q = select(Study.id).where(Study.study_uid == study_uid)
    if clause is not None:
        q = q.where(clause)
    answer = session.execute(q.limit(1)).first() is not None
    with _study_cache_lock:
        if len(_study_cache) > 50_000:
            _study_cache.clear()
        _study_cache[key] = (now + STUDY_DECISION_SECONDS, answer)
    return answer


def forget_decisions() -> None:
    """Drop cached single-study answers (after a grant is revoked, a membership removed, ...)."""
    with _study_cache_lock:
        _study_cache.clear()


def can_see_case(session: Session, principal: Principal, case: Any) -> bool:
    """Whether ``principal`` may see one case: case admin of its site, or may read its study.

    A case without images yet (created from an order) is visible to its
    site's case admins, the readers it is routed to, its ordering physician
    and grant holders.
    """
    from readingroom.governance.models import AccessGrant
    from readingroom.workflow.models import CaseCandidate

    if at_site(principal, CASES_ADMIN, case.site_id):
        return True
    if principal.user_id in (case.assignee, case.claimed_by):
        return True
    if _role_allows(principal, WORKLIST_READ) and session.execute(
            select(CaseCandidate.id).where(CaseCandidate.case_id == case.id,
                                           CaseCandidate.user_id == principal.user_id).limit(1)).first():
        return True
    if physician_key(principal.physician_name) and physician_key(case.ordering_physician) == physician_key(
            principal.physician_name):
        return True
    if session.execute(select(AccessGrant.id).where(*_active_grants(principal),
                                                    AccessGrant.case_id == case.id).limit(1)).first():
        return True
    if case.study_pk is not None:
        from readingroom.archive.models import Study

        uid = session.execute(select(Study.study_uid).where(Study.id == case.study_pk)).scalar()
        return bool(uid) and can_read_study(session, principal, uid)
    return False


def at_site(principal: Principal, action: str, site_id: int | None) -> bool:
    """Whether ``principal`` may do ``action`` on a resource of ``site_id`` (network roles: any site)."""
    sites = sites_where(principal, action)
    return sites is None or (site_id is not None and site_id in sites)


#: Roles that add instances to any study of their sites (acquisition, site administration).
SITE_WIDE_STORE_ROLES = frozenset({"admin", "site_admin", "technologist", "modality"})


def can_store_to_study(session: Session, principal: Principal, study_uid: str) -> bool:
    """Whether ``principal`` may add instances to a study: a new study, one of a site where it stores
    site-wide (technologists, modalities, site admins), or one it may read (a reader's routed case).

    Appending to a study re-opens it for everyone who reads it, so a partner or
    a reader cannot slip images into another site's (or an unrelated) study.
    """
    from readingroom.archive.models import Study

    if not allowed(principal, ARCHIVE_STORE):
        return False
    site = session.execute(select(Study.site_id).where(Study.study_uid == study_uid)).first()
    if site is None or principal.role == "admin":
        return True
    if site[0] is not None and site[0] in principal.site_ids and principal.roles_at(site[0]) & SITE_WIDE_STORE_ROLES:
        return True
    return can_read_study(session, principal, study_uid)


def exceptions_scope(principal: Principal) -> ColumnElement[bool] | None:
    """SQL condition on ``ExceptionItem`` for supervisors: None = all, else items of their sites' cases/studies."""
    from readingroom.archive.models import Study
    from readingroom.workflow.models import Case, ExceptionItem

    sites = sites_where(principal, CASES_ADMIN)
    if sites is None:
        return None
    if not sites:
        return false()
    return or_(ExceptionItem.case_id.in_(select(Case.id).where(Case.site_id.in_(sorted(sites)))),
               ExceptionItem.study_uid.in_(select(Study.study_uid).where(Study.site_id.in_(sorted(sites)))))


def visible_cases(principal: Principal) -> ColumnElement[bool] | None:
    """SQL condition on ``Case`` for case lists of supervisors: None = all, else their sites' cases."""
    from readingroom.workflow.models import Case

    sites = sites_where(principal, CASES_ADMIN)
    if sites is None:
        return None
    return Case.site_id.in_(sorted(sites)) if sites else false()


def seeable_cases(principal: Principal) -> ColumnElement[bool] | None:
    """SQL condition on ``Case``: the cases ``principal`` may see (None: all), the set twin of ``can_see_case``.

    For searches that list cases to everyone who may see them (FHIR Task),
    not only to supervisors (``visible_cases``): the site's case admins, the
    readers a case is routed to, its ordering physician, grant holders and
    whoever may read its study.
    """
    from readingroom.archive.models import Study
    from readingroom.governance.models import AccessGrant
    from readingroom.workflow.models import Case, CaseCandidate

    sites = sites_where(principal, CASES_ADMIN)
    if sites is None:
        return None
    conditions: list[ColumnElement[bool]] = [Case.assignee == principal.user_id,
                                             Case.claimed_by == principal.user_id]
    if sites:
        conditions.append(Case.site_id.in_(sorted(sites)))
    if _role_allows(principal, WORKLIST_READ):
        conditions.append(Case.id.in_(select(CaseCandidate.case_id).where(CaseCandidate.user_id == principal.user_id)))
    if physician_key(principal.physician_name):
        conditions.append(names_physician(Case.ordering_physician, principal.physician_name))
    conditions.append(Case.id.in_(select(AccessGrant.case_id).where(*_active_grants(principal),
                                                                    AccessGrant.case_id.is_not(None))))
    studies = visible_studies(principal)
    conditions.append(Case.study_pk.in_(select(Study.id).where(studies)) if studies is not None
                      else Case.study_pk.is_not(None))
    return or_(*conditions)
