"""Versions of the routing rules document in the database; one is active.

Replacing the rules is all or nothing: the new text is validated (field-level
errors, known site codes, a higher version) before it is stored, so a bad
document never displaces the active one. Compiled rules are cached per
process by version; every process picks up a new version on its next
decision because the active version is read from the database.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import Site
from readingroom.workflow.compiled import CompiledRules, compile_rules
from readingroom.workflow.models import RoutingRulesVersion
from readingroom.workflow.rules import RulesError, load_rules

BUILTIN_RULES = """\
version: 1
name: built-in default
description: >
  Until an administrator installs a rules document: every case goes on the shared (pull)
  worklist of every reader who is licensed, credentialed, on shift and free of conflicts.
defaults:
  mode: pull
  pools: [all]
"""

_cache: dict[tuple[str, int], CompiledRules] = {}
_lock = threading.Lock()


def known_site_codes(session: Session) -> list[str]:
    return list(session.scalars(select(Site.code)))


def active_version(session: Session) -> RoutingRulesVersion | None:
    return session.scalars(select(RoutingRulesVersion).where(RoutingRulesVersion.active.is_(True))).first()


def active_rules(session: Session, cache_key: str = "") -> tuple[CompiledRules, int]:
    """The compiled active rules and their version (0 = built-in default)."""
    row = active_version(session)
    version, text = (row.version, row.document) if row else (0, BUILTIN_RULES)
    key = (cache_key, version)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit, version
    compiled = compile_rules(load_rules(text))
    with _lock:
        _cache[key] = compiled
    return compiled, version


def replace_rules(session: Session, text: str, *, actor: str) -> RoutingRulesVersion:
    """Validate and activate a new document; RulesError (old one stays) if anything is wrong."""
    document = load_rules(text, known_sites=known_site_codes(session))
    current = session.scalar(select(func.max(RoutingRulesVersion.version))) or 0
    if document.version <= current:
        raise RulesError([{"loc": ["version"], "msg": f"version must be higher than the current {current}",
                           "type": "version"}])
    session.execute(update(RoutingRulesVersion).where(RoutingRulesVersion.active.is_(True)).values(active=False))
    row = RoutingRulesVersion(version=document.version, name=document.name, document=text, active=True,
                              created_at=utcnow(), created_by=actor)
    session.add(row)
    session.flush()
    return row


def list_versions(session: Session) -> list[RoutingRulesVersion]:
    return list(session.scalars(select(RoutingRulesVersion).order_by(RoutingRulesVersion.version.desc())))
