"""Route one case: which rule applies, who may read it, who gets it, and why.

:func:`route` is a pure function of its arguments, ``now`` included (the
server passes its replaceable clock's time, the simulator synthetic time),
so the server, the simulator and a dry run all execute exactly this code,
and a stored explanation can be reproduced from the same facts. The cost is
one pass over the rules and one over the readers.

Push mode orders the eligible readers by least outstanding RVU, then longest
idle (after readers holding a preferred subspecialty, in the rule's order of
preference, when it names any) and assigns the first. Pull mode lists all
eligible readers in the same order. Hub-and-spoke overflow adds the overflow pools once the case has
waited ``after_minutes`` since it became ready, or at once when nobody in
the pools could take it; an escalation that widened the pool lifts the pool
restriction altogether. Hard constraints (licence, credentials, shift, ...)
are never relaxed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from readingroom.workflow.compiled import CompiledRules
from readingroom.workflow.decision import (
    NO_ELIGIBLE_READER,
    EscalationPoint,
    RoutingDecision,
    explain,
    unroutable,
)
from readingroom.workflow.eligibility import Assessor, Exclusion, Needs, PoolCheck
from readingroom.workflow.enums import Mode, Reason
from readingroom.workflow.facts import NO_LOAD, CaseFacts, ReaderFacts, ReaderLoad, SiteFacts

_NEVER_IDLE = float("inf")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def route(
    case: CaseFacts,
    readers: Sequence[ReaderFacts],
    sites: Mapping[str, SiteFacts],
    rules: CompiledRules,
    now: datetime,
    loads: Mapping[str, ReaderLoad] | None = None,
    *,
    trace: bool = False,
) -> RoutingDecision:
    """Decide who may read ``case`` at ``now`` and, in push mode, who gets it.

    ``loads`` holds each reader's live load by username (missing: no load,
    idle time unknown). ``trace`` adds, per rule, whether it matched and the
    first condition that failed: for dry runs, too bulky to store every time.
    """
    now = _aware(now)
    loads = loads or {}
    site = sites.get(case.site)
    if site is None:
        return unroutable(case, rules, now, f"case site {case.site!r} is not a known site")
    local = now.astimezone(ZoneInfo(site.timezone))
    if case.priority is not None:
        base_priority, priority_source = case.priority, "order"
    else:
        base_priority, priority_source = rules.priority_for(case, site, local)
    selection = rules.select(case, site, base_priority, local, trace=trace)
    actions, priority = selection.actions, selection.priority
    waited = (now - case.ready_at).total_seconds() / 60.0

    sort_priority = priority
    aging = rules.aging.get(priority)
    if aging is not None and waited >= aging.after_minutes:
        sort_priority = aging.becomes
    sla_minutes = case.sla_minutes or actions.sla_minutes[priority]
    deadline = case.ready_at + timedelta(minutes=sla_minutes)
    ladder = tuple(
        EscalationPoint(
            case.ready_at + timedelta(minutes=sla_minutes * step.at_percent / 100.0),
            step.at_percent,
            step.action,
            tuple(step.notify),
        )
        for step in actions.escalation
    )

    needs = Needs(
        site=site,
        priority=priority,
        subspecialties=actions.subspecialties | case.required_subspecialties,
        qualifications=actions.qualifications,
        sites_allowed=actions.sites_allowed,
        ordering_physician=case.ordering_physician.casefold(),
        conflicted=case.conflicted_readers,
        rvu=case.rvu,
        capacity_horizon_hours=rules.capacity_horizon_hours,
        max_assigned=rules.max_assigned_per_reader,
        on_call_priorities=rules.on_call_priorities,
    )
    assessor = Assessor(needs, now)
    overflow = actions.overflow
    base_pool = PoolCheck.build(actions.pools, case.site, rules.pools, sites)
    overflow_pool = PoolCheck.build(overflow.pools, case.site, rules.pools, sites) if overflow is not None else None

    # Phase 1: hard constraints and pool membership (bit 1: base pool, bit 2: overflow pool) for every reader.
    reasons_of: list[list[Exclusion]] = []
    membership: list[int] = []
    base_eligible = 0
    check, in_base = assessor.check, base_pool.admits
    named = case.named_readers
    for reader in readers:
        reasons = check(reader, loads.get(reader.username, NO_LOAD))
        if named:  # a named expert replaces the pools: only they may take it
            member = 1 if reader.username in named else 0
        else:
            member = 1 if in_base(reader) else 0
        if overflow_pool is not None and overflow_pool.admits(reader):
            member |= 2
        if member & 1 and not reasons:
            base_eligible += 1
        reasons_of.append(reasons)
        membership.append(member)

    # Phase 2: does the pool widen?
    widened_by: str | None = None
    pool_text = ", ".join(actions.pools)
    if case.pool_widened:
        widened_by = "an escalation step widened the pool to every reader"
    elif overflow is not None:
        if waited >= overflow.after_minutes:
            widened_by = f"unclaimed for {waited:.0f} min (overflow after {overflow.after_minutes:g} min)"
        elif overflow.when_pool_empty and base_eligible == 0:
            widened_by = f"nobody eligible in pool {pool_text}"
    if named:
        overflow, widened_by = None, None
        not_in_pool = Exclusion(Reason.NOT_IN_POOL, f"not the named reader ({', '.join(sorted(named))})")
    elif overflow is None or case.pool_widened:
        not_in_pool = Exclusion(Reason.NOT_IN_POOL, f"not in pool {pool_text}")
    elif widened_by is None:
        not_in_pool = Exclusion(
            Reason.NOT_IN_POOL,
            f"not in pool {pool_text} (overflow to {', '.join(overflow.pools)} after "
            f"{overflow.after_minutes:g} min; waited {waited:.0f})",
        )
    else:
        also = ", ".join(overflow.pools)
        not_in_pool = Exclusion(Reason.NOT_IN_POOL, f"not in pool {pool_text} nor overflow pool {also}")

    # Phase 3: the effective pool, exclusions and the order of the eligible readers.
    excluded: dict[str, list[Exclusion]] = {}
    counts: dict[Reason, int] = {}
    ranked: list[tuple[int, float, float, str]] = []
    prefer = actions.prefer_subspecialties
    admitted = 3 if widened_by is not None else 1  # membership bits that count
    widen_all = widened_by is not None and case.pool_widened and not named
    for reader, reasons, member in zip(readers, reasons_of, membership, strict=True):
        if not (member & admitted or widen_all):
            reasons.append(not_in_pool)
        if reasons:
            excluded[reader.username] = reasons
            for reason in reasons:
                counts[reason.code] = counts.get(reason.code, 0) + 1
            continue
        load = loads.get(reader.username, NO_LOAD)
        idle = load.idle_since.timestamp() if load.idle_since is not None else _NEVER_IDLE
        ranked.append((_preference(prefer, reader) if prefer else 0, load.outstanding_rvu, idle, reader.username))
    ranked.sort()
    eligible = tuple(r[3] for r in ranked)

    assignee = second = None
    mode = Mode.PUSH if named else actions.mode
    if mode is Mode.PUSH and ranked:
        assignee = ranked[0][3]
        if actions.second_reader and len(ranked) > 1:
            second = ranked[1][3]

    decision = RoutingDecision(
        case_id=case.case_id,
        at=now,
        rules_name=rules.name,
        rules_version=rules.version,
        rule_id=selection.rule_id,
        rules_matched=selection.matched,
        priority=priority,
        priority_source=priority_source,
        sort_priority=sort_priority,
        mode=mode,
        required_subspecialties=needs.subspecialties,
        required_qualifications=actions.qualifications,
        second_reader=actions.second_reader,
        sla_deadline=deadline,
        escalation=ladder,
        overflowed=widened_by is not None,
        eligible=eligible,
        assignee=assignee,
        second_assignee=second,
        excluded=excluded,
        exception=None if eligible else NO_ELIGIBLE_READER,
        explanation={},
    )
    decision.explanation.update(
        explain(
            decision,
            site,
            needs,
            actions,
            raised_by=selection.raised_by,
            widened_by=widened_by,
            waited=waited,
            ranked=ranked,
            loads=loads,
            on_call=[name for name in eligible if name in assessor.on_call],
            counts=counts,
        )
    )
    if selection.trace is not None:
        decision.explanation["rules_trace"] = list(selection.trace)
    if case.procedure:
        decision.explanation["procedure"] = case.procedure
    if named or case.required_subspecialties or case.sla_minutes:
        decision.explanation["request"] = {"named_readers": sorted(named),
                                           "subspecialties": sorted(case.required_subspecialties),
                                           "sla_minutes": sla_minutes}
    return decision


def _preference(prefer: tuple[str, ...], reader: ReaderFacts) -> int:
    """Index of the first preferred subspecialty the reader holds (``len(prefer)``: none of them)."""
    for index, subspecialty in enumerate(prefer):
        if subspecialty in reader.subspecialties:
            return index
    return len(prefer)


def dry_run(
    case: CaseFacts,
    readers: Sequence[ReaderFacts],
    sites: Mapping[str, SiteFacts],
    rules: CompiledRules,
    now: datetime,
    loads: Mapping[str, ReaderLoad] | None = None,
) -> RoutingDecision:
    """Answer "who would get this case now, and why": :func:`route` plus the per-rule trace; nothing stored."""
    return route(case, readers, sites, rules, now, loads, trace=True)
