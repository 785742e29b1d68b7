"""Who may call which route: the reviewed expectation table of the authorisation matrix.

``test_authz_matrix.py`` enumerates every (method, path) of the running app
and checks each against this table, for every role, against resources of
the caller's own site and of another site, with and without a relationship
(the fixture is described in ``authz_world.py``). A route missing here fails
the matrix ("add an expectation for POST /api/v1/..."), and so does an entry
whose route is gone.

How to read an entry::

    "GET /dicomweb/studies/{study}": route("study", admin=ALL, site_admin=SITE, ...)

* the first argument names the fixture resource the route acts on (it fills
  the path, or the body) — ``None`` for routes about no particular resource;
  ``listing=...`` instead marks a collection whose *content* is scoped;
* each keyword gives one role an :class:`Access`: which fixture targets it
  may reach (``ALL``, ``SITE``, ``REL`` ...). A role not named is denied
  (deny by default); ``anonymous`` is the caller without credentials.

Denied means 401 (anonymous) or 403/404, and a refused write changes
nothing; allowed means neither, and for an existing resource of the caller's
reach not 404 either (a business refusal such as 409 or 422 still counts as
"the authorisation let it through").

The rules of issue 4 ("Governance and security") the table encodes:

* admin: everything; AI engines read every study (a network role, policy.NETWORK_ROLES);
* site admin and technologist: their sites' studies;
* a radiologist reads the cases routed to them (candidate, assignee, claimer), wherever they are, and
  those patients' priors, not the rest of their site (break-the-glass is the way there);
* a referring clinician reads the studies they ordered (Study.referring_physician or
  Case.ordering_physician equal to their physician_name), not the patient's other studies;
* a consultant reads the cases they were asked about (AccessGrant rows), priors included when granted;
* a partner has no site-wide reading right: only what a relationship gives (none in the fixture);
* the auditor sees the audit trail, never images; a modality only stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.governance.authz_world import (
    ANONYMOUS,
    CASE_TARGETS,
    MATRIX_ROLES,
    PERSONAL_TARGETS,
    SITE_TARGETS,
    STUDY_TARGETS,
)


@dataclass(frozen=True)
class Access:
    """One role's reach on one route: whether it may call it, and which fixture targets it reaches."""

    name: str
    allowed: bool
    targets: frozenset[str] = frozenset()

    def __or__(self, other: Access) -> Access:
        return Access(f"{self.name}+{other.name}", self.allowed or other.allowed, self.targets | other.targets)


_EVERY_TARGET = frozenset(STUDY_TARGETS) | frozenset(PERSONAL_TARGETS)
DENY = Access("deny", False)
#: Every resource, whatever its site, owner or relationship.
ALL = Access("all", True, _EVERY_TARGET)
#: Allowed on a route about no particular resource.
ALLOW = Access("allow", True, _EVERY_TARGET)
#: Resources of the caller's own site (site A).
SITE = Access("site", True, frozenset({"own", "own_unrelated"}))
#: Resources the caller has a relationship with (routed to, ordered, granted), at any site.
REL = Access("rel", True, frozenset({"own", "other_related"}))
#: REL and the related patient's earlier studies.
PRIORS = Access("priors", True, frozenset({"other_prior"}))
#: The caller's own personal resource (their token, session, share link).
MINE = Access("mine", True, frozenset({"mine"}))
#: May call the route, but reaches none of the fixture's resources (e.g. their own, empty, worklist).
EMPTY = Access("empty", True, frozenset())


@dataclass(frozen=True)
class Route:
    """The expectation for one (method, path)."""

    resource: str | None
    access: dict[str, Access]
    #: Collection routes whose content is scoped: the kind of fixture resource their items are.
    listing: str | None = None
    #: QIDO inside one study: refusing may also mean "200 with no results", allowing means results.
    search: bool = False
    #: "bearer" (API token) or "session" (browser cookie + CSRF header; a new session per request).
    credentials: str = "bearer"
    #: Statuses that still mean "let through" here besides the usual ones (e.g. 404 of an unconfigured feature).
    let_through: frozenset[int] = frozenset()
    notes: str = ""
    targets: tuple[str, ...] = field(default=())

    def access_of(self, role: str) -> Access:
        return self.access.get(role, DENY)


_TARGETS = {"study": STUDY_TARGETS, "case": CASE_TARGETS, "token": PERSONAL_TARGETS, "session": PERSONAL_TARGETS,
            "share": PERSONAL_TARGETS, "annotation": STUDY_TARGETS, "fhir_patient": STUDY_TARGETS,
            "fhir_report": STUDY_TARGETS}


def route(resource: str | None = None, *, listing: str | None = None, search: bool = False,
          credentials: str = "bearer", let_through: tuple[int, ...] = (), notes: str = "",
          **access: Access) -> Route:
    unknown = set(access) - set(MATRIX_ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {MATRIX_ROLES}")
    kind = resource or listing
    targets = _TARGETS.get(kind, SITE_TARGETS) if kind else ()
    return Route(resource, access, listing, search, credentials, frozenset(let_through), notes, targets)


def everyone(**overrides: Access) -> dict[str, Access]:
    """Every authenticated role allowed (not anonymous), with overrides."""
    return {**{r: ALLOW for r in MATRIX_ROLES if r != ANONYMOUS}, **overrides}


def each_their_own(**overrides: Access) -> dict[str, Access]:
    """Every authenticated role reaches its own personal resource only (not anonymous), with overrides."""
    return {**{r: MINE for r in MATRIX_ROLES if r != ANONYMOUS}, **overrides}


# -- reusable role maps ---------------------------------------------------------------------------------------

#: Reading a study's images or metadata (WADO-RS, rendered, QIDO inside a study).
READ_STUDY = dict(admin=ALL, ai_engine=ALL, site_admin=SITE, technologist=SITE, radiologist=REL | PRIORS,
                  referring_clinician=REL, consultant=REL | PRIORS, partner=EMPTY)
#: Seeing one case (detail, timeline): its site's supervisors and whoever may read its study.
SEE_CASE = dict(admin=ALL, ai_engine=ALL, site_admin=SITE, technologist=SITE, radiologist=REL,
                referring_clinician=REL, consultant=REL)
#: Commenting on a case one sees (comments.write): everyone who sees it except AI engines.
COMMENT_ON_CASE = dict(admin=ALL, site_admin=SITE, technologist=SITE, radiologist=REL, referring_clinician=REL,
                       consultant=REL)
#: Supervising cases (reassign, cancel, reroute, dry run, exception queue): admins, site admins of the case's site.
SUPERVISE = dict(admin=ALL, site_admin=SITE)
#: Work that only the reader holding the claim may do (the fixture's related cases are claimed by the radiologist).
CLAIM_HOLDER = dict(radiologist=REL)
#: Storing instances (STOW-RS) into an existing study: storers of its site, and readers who may read it (their
#: case and its priors: a derived object such as a measurement SR or a presentation state goes into the study
#: it was made on).
STORE_INTO = dict(admin=ALL, site_admin=SITE, technologist=SITE, partner=EMPTY, modality=SITE,
                  radiologist=REL | PRIORS)
STORE_NEW = dict(admin=ALLOW, site_admin=ALLOW, technologist=ALLOW, partner=ALLOW, modality=ALLOW, radiologist=ALLOW)
#: Drawing on a study's images (annotations.write): the radiologists and consultants who may read it.
ANNOTATE = dict(radiologist=REL | PRIORS, consultant=REL | PRIORS)
#: The matrix radiologist chairs and attends the own conference (tests/collab/authz_resources.py).
ATTENDS = Access("attends", True, frozenset({"own"}))
#: The matrix partner sent the own referral (tests/collab/authz_resources.py).
SUBMITTER = Access("submitter", True, frozenset({"own"}))
#: Changing a conference: its organiser or chair, and the supervisors of its site.
MANAGE_CONFERENCE = dict(admin=ALL, site_admin=SITE, radiologist=ATTENDS)
SEARCH_ALL = dict(admin=ALL, ai_engine=ALL, site_admin=SITE, technologist=SITE, radiologist=REL | PRIORS,
                  referring_clinician=REL, consultant=REL | PRIORS, partner=EMPTY)

#: FHIR Patient: the patient of any study, case or order one sees (other_prior's patient is other_related's).
FHIR_PATIENT = dict(admin=ALL, ai_engine=ALL, site_admin=SITE, technologist=SITE, radiologist=REL | PRIORS,
                    referring_clinician=REL | PRIORS, consultant=REL | PRIORS, partner=EMPTY)
#: FHIR searches whose content the route's own tests check: every role that reads the archive.
FHIR_READERS = dict(admin=ALLOW, ai_engine=ALLOW, site_admin=ALLOW, technologist=ALLOW, radiologist=ALLOW,
                    referring_clinician=ALLOW, consultant=ALLOW, partner=ALLOW)
#: FHIR Task search: the cases one sees (policy.seeable_cases, the set twin of can_see_case).
FHIR_TASKS = dict(SEE_CASE, partner=EMPTY)


EXPECTATIONS: dict[str, Route] = {
    # -- health (public) ---------------------------------------------------------------------------------------
    "GET /healthz": route(**everyone(anonymous=ALLOW)),
    "GET /readyz": route(**everyone(anonymous=ALLOW)),
    # -- accounts --------------------------------------------------------------------------------------------
    "GET /api/v1/me": route(**everyone()),
    "GET /api/v1/events": route(notes="one's own live stream; each event is filtered by policy.can_see_case",
                                **everyone()),
    # -- sign-in and one's own session (browser routes use the session cookie, a new one per request) -----
    "POST /api/v1/auth/login": route(notes="signing in is open to anyone with a password",
                                     **everyone(anonymous=ALLOW)),
    "POST /api/v1/auth/logout": route(credentials="session", **everyone()),
    "GET /api/v1/auth/session": route(credentials="session", **everyone()),
    "GET /api/v1/auth/sessions": route(**everyone()),
    "DELETE /api/v1/auth/sessions": route(notes="ends one's other sessions", **everyone()),
    "DELETE /api/v1/auth/sessions/{session_id}": route("session", notes="only one's own sessions, even admins",
                                                       **each_their_own()),
    "POST /api/v1/auth/password": route(notes="one's own password", **everyone()),
    "POST /api/v1/auth/totp/enroll": route(**everyone()),
    "POST /api/v1/auth/totp/confirm": route(**everyone()),
    "POST /api/v1/auth/totp/verify": route(credentials="session", **everyone()),
    "DELETE /api/v1/auth/totp": route(**everyone()),
    "GET /auth/oidc/login": route(let_through=(404,), notes="404 while no OpenID provider is configured; "
                                  "test_oidc.py runs the flow", **everyone(anonymous=ALLOW)),
    "GET /auth/oidc/callback": route(let_through=(404,), notes="as /auth/oidc/login",
                                     **everyone(anonymous=ALLOW)),
    "GET /login": route(**everyone(anonymous=ALLOW)),
    "POST /login": route(notes="the sign-in form (double-submit CSRF cookie)", **everyone(anonymous=ALLOW)),
    "POST /logout": route(credentials="session", let_through=(303,),
                          notes="signing out answers with the way back to the sign-in page", **everyone()),
    "GET /account": route(credentials="session", **everyone()),
    "POST /account/password": route(credentials="session", **everyone()),
    "POST /account/sessions/revoke-others": route(credentials="session", **everyone()),
    "POST /account/totp/enroll": route(credentials="session", **everyone()),
    "POST /account/totp/confirm": route(credentials="session", **everyone()),
    "POST /account/totp/verify": route(credentials="session", **everyone()),
    "POST /account/totp/disable": route(credentials="session", **everyone()),
    # -- API tokens --------------------------------------------------------------------------------------------
    "POST /api/v1/tokens": route(notes="a token for oneself", **everyone()),
    "GET /api/v1/tokens": route(notes="one's own tokens", **everyone()),
    "DELETE /api/v1/tokens/{token_id}": route(
        "token", notes="one's own; account administrators also their users' tokens",
        **each_their_own(admin=ALL, site_admin=MINE | SITE)),
    # -- accounts (a site admin manages the accounts of their sites, never admins, auditors or site admins) ----
    "GET /api/v1/users": route(listing="user", admin=ALL, site_admin=SITE),
    "POST /api/v1/users": route("user", notes="a site admin creates accounts of their sites only",
                                admin=ALL, site_admin=SITE),
    "GET /api/v1/users/{username}": route("user", admin=ALL, site_admin=SITE),
    "PATCH /api/v1/users/{username}": route("user", admin=ALL, site_admin=SITE),
    "PUT /api/v1/users/{username}/memberships/{site_code}": route("user", admin=ALL, site_admin=SITE),
    "DELETE /api/v1/users/{username}/memberships/{site_code}": route("membership", admin=ALL, site_admin=SITE),
    "POST /api/v1/users/{username}/unlock": route("user", admin=ALL, site_admin=SITE),
    "POST /api/v1/users/{username}/reset-second-factor": route("user", admin=ALL, site_admin=SITE),
    # -- audit trail and break-the-glass -------------------------------------------------------------------
    "GET /api/v1/audit": route(admin=ALLOW, auditor=ALLOW),
    "POST /api/v1/access/break-glass": route(
        "study", notes="for studies outside one's relationships, with a reason; reviewed afterwards",
        radiologist=ALL, referring_clinician=ALL),
    "GET /api/v1/access/reviews": route(admin=ALLOW, auditor=ALLOW),
    "POST /api/v1/access/reviews/{grant_id}": route("review", admin=ALL, auditor=ALL),
    # -- share links: the creator's API, and the public capability routes ----------------------------------
    "POST /api/v1/shares": route("study", notes="to studies one may read",
                                 admin=ALL, site_admin=SITE, radiologist=REL | PRIORS, referring_clinician=REL),
    "GET /api/v1/shares": route(admin=ALLOW, site_admin=ALLOW, radiologist=ALLOW, referring_clinician=ALLOW),
    "DELETE /api/v1/shares/{share_id}": route("share", notes="the link's creator, or an archive admin",
                                              admin=ALL, site_admin=MINE, radiologist=MINE,
                                              referring_clinician=MINE),
    "GET /share/{token}": route("share_link", notes="the link is the capability: anyone holding it",
                                **everyone(anonymous=ALL)),
    "GET /share/{token}/manifest": route("share_link", **everyone(anonymous=ALL)),
    "GET /share/{token}/download": route("share_link", **everyone(anonymous=ALL)),
    "GET /share/{token}/instances/{uid}/thumbnail": route("share_link", **everyone(anonymous=ALL)),
    "GET /share/{token}/instances/{uid}/frames/{frame}/rendered": route("share_link", **everyone(anonymous=ALL)),
    "POST /share/{token}/unlock": route("locked_share_link", notes="with the right passcode",
                                        **everyone(anonymous=ALL)),
    # -- retention (a site admin: rules and holds of their sites) -------------------------------------------
    "GET /api/v1/retention/rules": route(listing="rule", admin=ALL, site_admin=SITE),
    "POST /api/v1/retention/rules": route("rule", admin=ALL, site_admin=SITE),
    "DELETE /api/v1/retention/rules/{rule_id}": route("rule", admin=ALL, site_admin=SITE),
    "GET /api/v1/retention/holds": route(listing="hold", admin=ALL, site_admin=SITE),
    "POST /api/v1/retention/holds": route("study", admin=ALL, site_admin=SITE),
    "POST /api/v1/retention/holds/{hold_id}/release": route("hold", admin=ALL, site_admin=SITE),
    "POST /api/v1/retention/run": route(notes="a dry run over the caller's sites", admin=ALLOW, site_admin=ALLOW),
    # -- archive administration ------------------------------------------------------------------------------
    "GET /api/v1/peers": route(listing="peer", admin=ALL, site_admin=SITE),
    "POST /api/v1/peers": route("peer", admin=ALL, site_admin=SITE),
    "DELETE /api/v1/peers/{name}": route("peer", admin=ALL, site_admin=SITE),
    # -- sites, readers, routing rules -----------------------------------------------------------------------
    "GET /api/v1/sites": route(notes="the network's directory, no patient data", **everyone()),
    "POST /api/v1/sites": route(admin=ALLOW),
    "GET /api/v1/readers/{username}": route("reader", admin=ALL),
    "PUT /api/v1/readers/{username}": route("reader", admin=ALL),
    "GET /api/v1/routing/rules": route(admin=ALLOW, site_admin=ALLOW, radiologist=ALLOW),
    "PUT /api/v1/routing/rules": route(admin=ALLOW),
    "GET /api/v1/routing/rules/versions": route(admin=ALLOW),
    # -- worklist and cases ----------------------------------------------------------------------------------
    "GET /api/v1/worklist": route(listing="case", notes="one's own worklist", admin=EMPTY, site_admin=EMPTY,
                                  radiologist=REL),
    "GET /api/v1/cases": route(listing="case", **SUPERVISE),
    "GET /api/v1/cases/{case_id}": route("case", **SEE_CASE),
    "POST /api/v1/cases/{case_id}/claim": route(
        "case", notes="the fixture's related cases are already claimed (409); others must not learn of a case",
        admin=ALL, site_admin=SITE, radiologist=REL),
    "POST /api/v1/cases/{case_id}/release": route("case", **CLAIM_HOLDER),
    "POST /api/v1/cases/{case_id}/complete": route("case", **CLAIM_HOLDER),
    "POST /api/v1/cases/{case_id}/heartbeat": route(
        "case", notes="409 for a visible case one does not hold", admin=ALL, site_admin=SITE, radiologist=REL),
    "POST /api/v1/cases/{case_id}/reassign": route("case", **SUPERVISE),
    "POST /api/v1/cases/{case_id}/cancel": route("case", **SUPERVISE),
    "POST /api/v1/cases/{case_id}/reroute": route("case", **SUPERVISE),
    "GET /api/v1/cases/{case_id}/dry-run": route("case", **SUPERVISE),
    "GET /api/v1/exceptions": route(listing="exception", **SUPERVISE),
    "POST /api/v1/exceptions/{item_id}/resolve": route("exception", **SUPERVISE),
    "POST /api/v1/studies/{study_uid}/ai-findings": route("study", admin=ALL, ai_engine=ALL),
    # -- consults, second opinions, second reads, peer review (a consult's or review's own case id; the
    # fixture's cases are primary reads, so the routes on a consult or review reach none of them) ---------------
    "POST /api/v1/cases/{case_id}/consults": route("case", admin=ALL, site_admin=SITE, radiologist=REL,
                                                   referring_clinician=REL),
    "GET /api/v1/cases/{case_id}/consults": route("case", **SEE_CASE),
    "GET /api/v1/consults": route(notes="consults asked of or by the caller", **everyone()),
    "GET /api/v1/consults/{case_id}": route("case", **{r: EMPTY for r in MATRIX_ROLES if r != ANONYMOUS}),
    "POST /api/v1/consults/{case_id}/accept": route("case", radiologist=EMPTY, consultant=EMPTY),
    "POST /api/v1/consults/{case_id}/answer": route("case", radiologist=EMPTY, consultant=EMPTY),
    "POST /api/v1/peer-reviews/{case_id}/accept": route("case", admin=EMPTY, site_admin=EMPTY, radiologist=EMPTY),
    "POST /api/v1/peer-reviews/{case_id}/score": route("case", admin=EMPTY, site_admin=EMPTY, radiologist=EMPTY),
    "GET /api/v1/peer-reviews/mine": route(notes="reviews of one's own reads, reviewer withheld",
                                           admin=ALLOW, site_admin=ALLOW, radiologist=ALLOW),
    "GET /api/v1/peer-reviews": route(admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/peer-reviews/summary": route(admin=ALLOW, site_admin=ALLOW),
    # -- image annotations: whoever reads the study sees them; radiologists and consultants draw ------------
    "GET /api/v1/studies/{study_uid}/annotations": route("study", **READ_STUDY),
    "POST /api/v1/studies/{study_uid}/annotations": route("study", **ANNOTATE),
    "POST /api/v1/studies/{study_uid}/annotations/export": route(
        "study", notes="422 for a study without annotations still means 'let through'", **READ_STUDY),
    "GET /api/v1/annotations/{annotation_id}": route("annotation", **READ_STUDY),
    "GET /api/v1/annotations/{annotation_id}/history": route("annotation", **READ_STUDY),
    "PUT /api/v1/annotations/{annotation_id}": route("annotation", **ANNOTATE),
    "DELETE /api/v1/annotations/{annotation_id}": route("annotation", **ANNOTATE),
    # -- conferences (tumour boards, MDT): organisers, chairs, attendees and the site's supervisors ----------
    "POST /api/v1/conferences": route(notes="at a site where the caller may organise them (the caller's own)",
                                      admin=ALLOW, site_admin=ALLOW, radiologist=ALLOW),
    "GET /api/v1/conferences": route(notes="the sessions one attends, organises or supervises", **everyone()),
    "GET /api/v1/conferences/{conference_id}": route("conference", **MANAGE_CONFERENCE),
    "POST /api/v1/conferences/{conference_id}/cases": route("conference", **MANAGE_CONFERENCE),
    "POST /api/v1/conferences/{conference_id}/attendees": route("conference", **MANAGE_CONFERENCE),
    "POST /api/v1/conferences/{conference_id}/check-in": route(
        "conference", notes="attendees only; 409 outside the session's time", radiologist=ATTENDS),
    "POST /api/v1/conferences/{conference_id}/cases/{case_id}/presented": route(
        "conference", notes="the chair only; 409 before the session", radiologist=ATTENDS),
    "POST /api/v1/conferences/{conference_id}/cases/{case_id}/decision": route(
        "conference", notes="the chair only; 409 before the session", radiologist=ATTENDS),
    # -- referrals: partners submit and follow their own; the receiving site's managers answer ----------------
    "POST /api/v1/referrals": route(partner=ALLOW),
    "GET /api/v1/referrals": route(notes="one's own (partners), one's sites' (managers)",
                                   admin=ALLOW, site_admin=ALLOW, partner=ALLOW),
    "GET /api/v1/referrals/{referral_id}": route("referral", admin=ALL, site_admin=SITE, partner=SUBMITTER),
    "POST /api/v1/referrals/{referral_id}/accept": route("referral", admin=ALL, site_admin=SITE),
    "POST /api/v1/referrals/{referral_id}/decline": route("referral", admin=ALL, site_admin=SITE),
    # -- critical results (collab/critical_api.py) ------------------------------------------------------------
    "GET /api/v1/critical-levels": route(**everyone()),
    "POST /api/v1/cases/{case_id}/critical-results": route("case", notes="readers flag findings on cases they see",
                                                           radiologist=REL),
    "GET /api/v1/cases/{case_id}/critical-results": route("case", **SEE_CASE),
    "GET /api/v1/critical-results": route(notes="those addressed to the caller", **everyone()),
    "GET /api/v1/critical-results/{result_id}": route("critical", **SEE_CASE),
    "POST /api/v1/critical-results/{result_id}/acknowledge": route(
        "critical", notes="the clinician told (ordering / referring physician), their delegate, an escalation "
        "recipient", referring_clinician=REL),
    "GET /api/v1/me/critical-delegate": route(referring_clinician=ALLOW),
    "PUT /api/v1/me/critical-delegate": route(notes="422 in the fixture: nobody there may acknowledge for them",
                                              referring_clinician=ALLOW),
    "DELETE /api/v1/me/critical-delegate": route(referring_clinician=ALLOW),
    # -- comments (collab/comments_api.py); the fixture comment is the caller's own ------------------------
    "GET /api/v1/cases/{case_id}/comments": route("case", **SEE_CASE),
    "POST /api/v1/cases/{case_id}/comments": route("case", **COMMENT_ON_CASE),
    "PUT /api/v1/comments/{comment_id}": route("comment", notes="one's own comment", **COMMENT_ON_CASE),
    "DELETE /api/v1/comments/{comment_id}": route("comment", notes="one's own (supervisors: any of their sites)",
                                                  **COMMENT_ON_CASE),
    "GET /api/v1/comments/{comment_id}/revisions": route("comment", **SEE_CASE),
    # -- reports (collab/reports_api.py): whoever sees the case reads it (signed versions unless they write
    # reports); only the case's reader drafts and signs; the matrix sends no If-Match, so allowed writes
    # answer 428 and change nothing ---------------------------------------------------------------------------
    "GET /api/v1/report-templates": route(notes="templates hold no patient data", **everyone()),
    "GET /api/v1/cases/{case_id}/report-template": route("case", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report": route("case", **SEE_CASE),
    "PUT /api/v1/cases/{case_id}/report": route("case", **CLAIM_HOLDER),
    "POST /api/v1/cases/{case_id}/report/sign": route("case", **CLAIM_HOLDER),
    "POST /api/v1/cases/{case_id}/report/addenda": route(
        "case", notes="any reader who may sign and sees the case; 428/409 in the fixture", radiologist=REL),
    "GET /api/v1/cases/{case_id}/report/versions": route("case", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report/diff": route("case", notes="409 without versions", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report/fhir": route("case", notes="409 until signed", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report/hl7": route("case", notes="409 until signed", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report/html": route("case", notes="409 until signed", **SEE_CASE),
    "GET /api/v1/cases/{case_id}/report/pdf": route("case", notes="409 until signed", **SEE_CASE),
    # -- DICOMweb: QIDO-RS -----------------------------------------------------------------------------------
    "GET /dicomweb/studies": route(listing="study", **SEARCH_ALL),
    "GET /dicomweb/series": route(listing="study", **SEARCH_ALL),
    "GET /dicomweb/instances": route(listing="study", **SEARCH_ALL),
    "GET /dicomweb/studies/{study}/series": route("study", search=True, **READ_STUDY),
    "GET /dicomweb/studies/{study}/instances": route("study", search=True, **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances": route("study", search=True, **READ_STUDY),
    # -- DICOMweb: WADO-RS, rendered, thumbnails ------------------------------------------------------------
    "GET /dicomweb/studies/{study}": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/metadata": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/metadata": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}": route(
        "study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/rendered": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/thumbnail": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/rendered": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/thumbnail": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/thumbnail": route("study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/rendered": route(
        "study", **READ_STUDY),
    "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/thumbnail": route(
        "study", **READ_STUDY),
    # -- orders (interop/orders_api.py): a site's supervisors and technologists see its orders, a referring
    # clinician the ones they placed (the fixture's are placed by someone else); orders.write places them --------
    "GET /api/v1/orders": route(notes="content scoped (tests/interop/test_orders_api.py)", **everyone()),
    "GET /api/v1/orders/{order_id}": route("order", admin=ALL, ai_engine=ALL, site_admin=SITE, technologist=SITE),
    "POST /api/v1/orders": route(notes="an order for the caller's own site", admin=ALLOW, site_admin=ALLOW,
                                 referring_clinician=ALLOW),
    "PUT /api/v1/orders/{order_id}": route("order", admin=ALL, site_admin=SITE),
    "POST /api/v1/orders/{order_id}/cancel": route("order", admin=ALL, site_admin=SITE),
    # -- forwarding rules and go-live validation (interop/forwarding_api.py, golive_api.py): interop.admin; a site
    # admin reaches the rules whose destination is of their sites and the peers of their sites --------------------
    "GET /api/v1/interop/forwarding-rules": route(notes="content scoped by destination site", admin=ALLOW,
                                                  site_admin=ALLOW),
    "POST /api/v1/interop/forwarding-rules": route(notes="to a destination of the caller's sites", admin=ALLOW,
                                                   site_admin=ALLOW),
    "PUT /api/v1/interop/forwarding-rules/{rule_id}": route("forwarding_rule", admin=ALL, site_admin=SITE),
    "DELETE /api/v1/interop/forwarding-rules/{rule_id}": route("forwarding_rule", admin=ALL, site_admin=SITE),
    "GET /api/v1/interop/forwarding": route(notes="a study of the caller's sites (study_uid query)", admin=ALLOW,
                                            site_admin=ALLOW),
    "POST /api/v1/interop/forwarding": route(notes="a study and destination of the caller's sites", admin=ALLOW,
                                             site_admin=ALLOW),
    "POST /api/v1/peers/{name}/validations": route("peer", notes="runs the go-live checklist (fails fast: the "
                                                   "fixture peer's port is closed)", admin=ALL, site_admin=SITE),
    "GET /api/v1/peers/{name}/validations": route("peer", admin=ALL, site_admin=SITE),
    # -- patient identity and duplicate reports (interop/identity_api.py): interop.admin; a site admin reaches the
    # patients with a study or an order at their sites, and the duplicate reports of their sites' studies -------
    "GET /api/v1/patients/{patient_pk}/links": route("patient", admin=ALL, site_admin=SITE),
    "GET /api/v1/interop/identity/links": route(notes="content scoped (tests/interop/test_identity.py)",
                                                admin=ALLOW, site_admin=ALLOW),
    "POST /api/v1/interop/identity/links/{link_id}/confirm": route("patient_link", admin=ALL, site_admin=SITE),
    "POST /api/v1/interop/identity/links/{link_id}/reject": route("patient_link", admin=ALL, site_admin=SITE),
    "GET /api/v1/interop/duplicates": route(notes="content scoped (tests/interop/test_identity.py)", admin=ALLOW,
                                            site_admin=ALLOW),
    # -- outbound destinations, their health and the outbox (interop/destinations_api.py, outbox_api.py):
    # interop.admin; a site admin reaches the destinations of their sites and those destinations' outbox items
    # (others answer 404), a network-wide destination is the admin's alone ------------------------------------
    "GET /api/v1/interop/destinations": route(notes="content scoped by site (tests/interop/test_outbox_api.py)",
                                              admin=ALLOW, site_admin=ALLOW),
    "POST /api/v1/interop/destinations": route(notes="at a site the caller administers", admin=ALLOW,
                                               site_admin=ALLOW),
    "GET /api/v1/interop/destinations/{name}": route("destination", admin=ALL, site_admin=SITE),
    "PATCH /api/v1/interop/destinations/{name}": route("destination", admin=ALL, site_admin=SITE),
    "DELETE /api/v1/interop/destinations/{name}": route("destination", admin=ALL, site_admin=SITE),
    "GET /api/v1/interop/destinations/{name}/health": route("destination", admin=ALL, site_admin=SITE),
    "GET /api/v1/interop/health": route(notes="content scoped by site", admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/interop/outbox": route(notes="content scoped by the destination's site", admin=ALLOW,
                                        site_admin=ALLOW),
    "GET /api/v1/interop/outbox/{item_id}": route("outbox_item", admin=ALL, site_admin=SITE),
    "POST /api/v1/interop/outbox/{item_id}/retry": route("outbox_item", admin=ALL, site_admin=SITE),
    "POST /api/v1/interop/outbox/{item_id}/cancel": route("outbox_item", admin=ALL, site_admin=SITE),
    # -- canonical procedures (interop/procedures_api.py): a catalogue without patient data every signed-in user
    # reads; network admins change it; mappings are interop.admin, a site admin's limited to their sites' scope
    # (the network-wide '*' ones are visible to them, not theirs to change) ------------------------------------
    "GET /api/v1/procedures": route(notes="the catalogue, no patient data", **everyone()),
    "POST /api/v1/procedures": route(admin=ALLOW),
    "GET /api/v1/procedures/{code}": route("procedure", **everyone()),
    "PUT /api/v1/procedures/{code}": route("procedure", admin=ALL),
    "DELETE /api/v1/procedures/{code}": route("procedure", admin=ALL),
    "GET /api/v1/procedure-mappings": route(notes="content scoped (tests/interop/test_procedures.py)",
                                            admin=ALLOW, site_admin=ALLOW),
    "POST /api/v1/procedure-mappings": route("procedure_scope", notes="a mapping scoped to the target's site",
                                             admin=ALL, site_admin=SITE),
    "DELETE /api/v1/procedure-mappings/{mapping_id}": route("procedure_mapping", admin=ALL, site_admin=SITE),
    "POST /api/v1/procedure-mappings/import": route("procedure_scope", notes="a CSV row scoped to the target's "
                                                    "site", admin=ALL, site_admin=SITE),
    "GET /api/v1/procedure-mappings/unmapped": route(notes="content scoped (tests/interop/test_procedures.py)",
                                                     admin=ALLOW, site_admin=ALLOW),
    # -- FHIR R4 (interop/fhir.py): the REST API's principals and scoping; reads need archive.read, then each
    # resource shows what its REST twin would (ImagingStudy = QIDO, Task = the case, ServiceRequest = the order,
    # Communication = the critical result); a Patient is seen through any visible study, case or order --------
    "GET /fhir/metadata": route(notes="the CapabilityStatement, no patient data", **everyone(anonymous=ALLOW)),
    "GET /fhir/Patient": route(listing="fhir_patient", **FHIR_PATIENT),
    "GET /fhir/Patient/{patient_pk}": route("fhir_patient", **FHIR_PATIENT),
    "GET /fhir/ImagingStudy": route(listing="study", **SEARCH_ALL),
    "GET /fhir/ImagingStudy/{study}": route("study", **READ_STUDY),
    "GET /fhir/ServiceRequest": route(notes="content scoped as GET /api/v1/orders (tests/interop/test_fhir.py)",
                                      **FHIR_READERS),
    "GET /fhir/ServiceRequest/{order_id}": route("order", admin=ALL, ai_engine=ALL, site_admin=SITE,
                                                 technologist=SITE),
    "POST /fhir/ServiceRequest": route(notes="an order for the caller's own site", admin=ALLOW, site_admin=ALLOW,
                                       referring_clinician=ALLOW),
    "PUT /fhir/ServiceRequest/{order_id}": route("order", notes="status revoked: cancels the order",
                                                 admin=ALL, site_admin=SITE),
    "GET /fhir/DiagnosticReport": route(notes="signed reports of the cases one sees; none in the fixture's "
                                        "reach but other_prior's", **FHIR_READERS),
    "GET /fhir/DiagnosticReport/{report_id}": route("fhir_report", let_through=(404,),
                                                    notes="only signed reports exist (404 for the others)",
                                                    **READ_STUDY),
    "GET /fhir/Task": route(listing="case", **FHIR_TASKS),
    "GET /fhir/Task/{case_id}": route("case", **SEE_CASE),
    "PUT /fhir/Task/{case_id}": route("case", notes="status in-progress = claim: as POST /cases/{id}/claim",
                                      admin=ALL, site_admin=SITE, radiologist=REL),
    "GET /fhir/Communication": route(notes="critical results of the cases one sees", **FHIR_READERS),
    "GET /fhir/Communication/{result_id}": route("critical", **SEE_CASE),
    # -- turnaround analytics (analytics/api.py): analytics.read; a site admin's figures count only their sites'
    # cases (tests/analytics/test_turnaround.py) ---------------------------------------------------------------
    "GET /api/v1/analytics/stages": route(notes="the stage list, no case data", admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/analytics/turnaround": route(notes="content scoped by site", admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/analytics/queue-depth": route(notes="content scoped by site", admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/analytics/readers": route(notes="content scoped by site", admin=ALLOW, site_admin=ALLOW),
    "GET /api/v1/analytics/export": route(notes="content scoped by site", admin=ALLOW, site_admin=ALLOW),
    # -- DICOMweb: STOW-RS -----------------------------------------------------------------------------------
    "POST /dicomweb/studies": route(notes="a new study of the caller's site", **STORE_NEW),
    "POST /dicomweb/studies/{study}": route("study", notes="an instance added to an existing study",
                                            **STORE_INTO),
}


# -- cells waiting for scoping that has not landed yet ---------------------------------------------------------
#
# route -> role -> targets ("*" for a route without targets) whose outcome differs from the table only
# because relationship / site scoping is still being added to policy.py and the routes. The matrix xfails
# these cells, and FAILS when one of them starts passing, so the list shrinks to nothing: delete the cells
# (or the whole entry) once the scoping lands. Never add a cell here for any other reason.
PENDING_SCOPING: dict[str, dict[str, tuple[str, ...]]] = {}
