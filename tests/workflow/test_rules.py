"""The rules document: validation with field-level errors, YAML/JSON input, evaluation semantics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from readingroom.workflow import (
    CaseFacts,
    Mode,
    Priority,
    RuleBook,
    RulesError,
    compile_rules,
    load_rules,
    priority_from_rules,
)
from tests.workflow.factories import SITES, case, rules

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-rules.yaml"


def errors_of(text: str, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(RulesError) as caught:
        load_rules(text, **kwargs)
    return caught.value.errors


def locs(text: str, **kwargs: Any) -> list[list[Any]]:
    return [e["loc"] for e in errors_of(text, **kwargs)]


class TestExampleDocument:
    def test_example_validates_against_the_reference_sites(self) -> None:
        doc = load_rules(EXAMPLE.read_text(), known_sites=["H1", "S2", "S3", "S4", "S5"])
        assert doc.name == "reference-network"
        assert doc.defaults.mode is Mode.PUSH
        assert doc.defaults.sla_minutes[Priority.STAT] == 60
        compiled = compile_rules(doc)
        assert {"ai-ich", "mammo-screening", "nuclear-medicine", "mr-neuro"} <= {r.id for r in compiled.rules}


class TestFieldLevelErrors:
    def test_unknown_field_is_reported_where_it_is(self) -> None:
        text = """
version: 1
name: t
rules:
  - id: r1
    match: {modality: MR}
    actions: {subspeciality: neuro}
"""
        errors = errors_of(text)
        assert errors[0]["loc"] == ["rules", 0, "actions", "subspeciality"]
        assert errors[0]["type"] == "extra_forbidden"

    def test_bad_regex(self) -> None:
        text = "version: 1\nname: t\nrules:\n  - id: r1\n    match: {description: 'head(('}\n"
        errors = errors_of(text)
        assert errors[0]["loc"] == ["rules", 0, "match", "description"]
        assert "invalid regular expression" in errors[0]["msg"]

    def test_bad_regex_in_order_field(self) -> None:
        text = "version: 1\nname: t\nrules:\n  - id: r1\n    match: {order: {procedure_code: '[A-'}}\n"
        assert locs(text) == [["rules", 0, "match", "order", "procedure_code"]]

    def test_bad_priority(self) -> None:
        text = "version: 1\nname: t\nrules:\n  - id: r1\n    match: {priority: [asap]}\n"
        assert locs(text) == [["rules", 0, "match", "priority", 0]]

    def test_negative_sla(self) -> None:
        text = "version: 1\nname: t\ndefaults:\n  sla_minutes: {critical: 30, stat: -5, urgent: 360, routine: 1440}\n"
        errors = errors_of(text)
        assert errors[0]["loc"] == ["defaults", "sla_minutes", "stat"]
        assert "greater than 0" in errors[0]["msg"]

    def test_defaults_need_every_priority(self) -> None:
        text = "version: 1\nname: t\ndefaults:\n  sla_minutes: {stat: 60}\n"
        errors = errors_of(text)
        assert errors[0]["loc"] == ["defaults", "sla_minutes"]
        assert "critical" in errors[0]["msg"] and "routine" in errors[0]["msg"]

    def test_rule_may_override_part_of_the_sla(self) -> None:
        doc = load_rules("version: 1\nname: t\nrules:\n  - id: r1\n    actions: {sla_minutes: {stat: 45}}\n")
        assert doc.rules[0].actions.sla_minutes == {Priority.STAT: 45}

    def test_every_problem_is_reported_at_once(self) -> None:
        text = """
version: 0
name: t
defaults: {mode: shove}
rules:
  - id: r1
    match: {modality: MR, bodypart: HEAD}
"""
        assert sorted(map(str, locs(text))) == sorted(
            map(str, [["version"], ["defaults", "mode"], ["rules", 0, "match", "bodypart"]])
        )

    @pytest.mark.parametrize(
        ("snippet", "loc"),
        [
            ("rules:\n  - id: a\n    actions: {pools: [nightshift]}\n", ["rules", 0, "actions", "pools", 0]),
            ("rules:\n  - id: a\n  - id: a\n", ["rules", 1, "id"]),
            ("pools:\n  hub: {readers: [x]}\n", ["pools", "hub"]),
            ("pools:\n  empty: {description: nobody}\n", ["pools", "empty"]),
            ("defaults:\n  overflow: {after_minutes: 10, pools: [spokes]}\n", ["defaults", "overflow", "pools", 0]),
            ("defaults:\n  overflow: {after_minutes: -1}\n", ["defaults", "overflow", "after_minutes"]),
            (
                "defaults:\n  escalation: [{at_percent: 80, action: warn}, {at_percent: 50, action: warn}]\n",
                ["defaults", "escalation"],
            ),
            (
                "defaults:\n  aging: [{priority: stat, after_minutes: 10, becomes: routine}]\n",
                ["defaults", "aging", 0],
            ),
            (
                "rules:\n  - id: a\n    match: {time_of_day: {start: '08:00', end: '08:00'}}\n",
                ["rules", 0, "match", "time_of_day"],
            ),
            ("rules:\n  - id: a\n    match: {days: [funday]}\n", ["rules", 0, "match", "days"]),
            (
                "rules:\n  - id: a\n    match: {patient_age: {at_least: 18, under: 2}}\n",
                ["rules", 0, "match", "patient_age"],
            ),
            (
                "priority_rules:\n  - {id: p, match: {priority: [stat]}, priority: stat}\n",
                ["priority_rules", 0, "match"],
            ),
            ("rules:\n  - id: 'has space'\n", ["rules", 0, "id"]),
            (
                "rules:\n  - id: a\n    actions: {escalation: [{at_percent: 50, action: panic}]}\n",
                ["rules", 0, "actions", "escalation", 0, "action"],
            ),
        ],
    )
    def test_cross_field_and_value_errors(self, snippet: str, loc: list[Any]) -> None:
        assert loc in locs("version: 1\nname: t\n" + snippet)

    def test_unknown_site_only_when_sites_are_known(self) -> None:
        text = "version: 1\nname: t\nrules:\n  - id: a\n    match: {site: [H1, XX]}\n"
        load_rules(text)
        assert locs(text, known_sites=["H1"]) == [["rules", 0, "match", "site", 1]]

    @pytest.mark.parametrize("text", ["version: 1\nname: [unclosed\n", "- just\n- a list\n", '{"version": 1,', ""])
    def test_unparseable_or_not_a_mapping(self, text: str) -> None:
        assert locs(text) == [[]]


class TestInputForms:
    def test_unquoted_times_and_country_codes_stay_strings(self) -> None:
        # YAML 1.1 would read 22:00 as the integer 1320 and NO (Norway) as false.
        doc = load_rules(
            "version: 1\nname: t\npools:\n  nordic: {home_sites: [NO, SE]}\nrules:\n"
            "  - id: night\n    match: {time_of_day: {start: 22:00, end: 07:00}}\n"
        )
        assert doc.pools["nordic"].home_sites == ["NO", "SE"]
        window = doc.rules[0].match.time_of_day
        assert window is not None and (window.start.hour, window.end.hour) == (22, 7)

    def test_json_document(self) -> None:
        data = {"version": 2, "name": "j", "rules": [{"id": "a", "match": {"modality": "MR"}}]}
        assert load_rules(json.dumps(data)).rules[0].match.modality == ["MR"]

    @pytest.mark.parametrize(("alias", "priority"), [("P1", "critical"), ("STAT", "stat"), ("p3", "urgent")])
    def test_priority_aliases(self, alias: str, priority: str) -> None:
        doc = load_rules(f"version: 1\nname: t\ndefaults: {{priority: {alias}}}\n")
        assert doc.defaults.priority == Priority(priority)


class TestRuleBook:
    GOOD = "version: {v}\nname: t\nrules:\n  - id: a\n    match: {{modality: MR}}\n"

    def test_bad_document_leaves_the_old_rules_active(self) -> None:
        book = RuleBook()
        first = book.replace(self.GOOD.format(v=1))
        with pytest.raises(RulesError):
            book.replace("version: 2\nname: t\nrules:\n  - id: a\n    match: {modality: MR, colour: red}\n")
        assert book.active is first

    def test_version_must_increase(self) -> None:
        book = RuleBook()
        book.replace(self.GOOD.format(v=3))
        with pytest.raises(RulesError) as caught:
            book.replace(self.GOOD.format(v=3))
        assert caught.value.errors[0]["loc"] == ["version"]
        assert book.replace(self.GOOD.format(v=4)).version == 4


NOW = datetime(2025, 1, 13, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York


def select(compiled_text: str, facts: CaseFacts, now: datetime = NOW, priority: Priority | None = None) -> Any:
    compiled = rules(compiled_text)
    site = SITES[facts.site]
    local = now.astimezone(ZoneInfo(site.timezone))
    return compiled.select(facts, site, priority or facts.priority or Priority.ROUTINE, local, trace=True)


class TestEvaluation:
    def test_first_match_wins_and_stop_false_merges(self) -> None:
        text = """
version: 1
name: t
defaults: {mode: push, second_reader: false}
rules:
  - id: trial
    match: {order: {protocol_id: '^TRIAL-'}}
    actions: {second_reader: true, mode: pull}
    stop: false
  - id: neuro
    match: {body_part: HEAD}
    actions: {subspecialty: neuro, mode: push}
  - id: never
    match: {body_part: HEAD}
    actions: {subspecialty: body}
"""
        sel = select(text, case(body_part="HEAD", order={"protocol_id": "TRIAL-17"}))
        assert sel.matched == ("trial", "neuro") and sel.rule_id == "neuro"
        assert sel.actions.second_reader and sel.actions.mode is Mode.PUSH
        assert sel.actions.subspecialties == {"neuro"}
        assert [t["matched"] for t in sel.trace] == [True, True]

    def test_raise_priority_applies_to_later_rules(self) -> None:
        text = """
version: 1
name: t
rules:
  - {id: ai, match: {flags_any: [AI_ICH]}, actions: {raise_priority: critical}, stop: false}
  - {id: crit, match: {priority: [critical]}, actions: {prefer_subspecialty: neuro}}
"""
        sel = select(text, case(flags={"ai_ich"}))
        assert sel.priority is Priority.CRITICAL and sel.raised_by == ("ai",) and sel.rule_id == "crit"
        # A raise never lowers.
        text_low = "version: 1\nname: t\nrules:\n  - {id: r, actions: {raise_priority: urgent}}\n"
        assert select(text_low, case(priority="stat")).priority is Priority.STAT

    def test_null_clears_a_default(self) -> None:
        text = """
version: 1
name: t
defaults: {overflow: {after_minutes: 15}, subspecialty: general}
rules:
  - {id: r, actions: {overflow: null, subspecialty: null}}
"""
        sel = select(text, case())
        assert sel.actions.overflow is None and sel.actions.subspecialties == frozenset()

    @pytest.mark.parametrize(
        ("match", "facts", "expected"),
        [
            ("{modality: [mr, ct]}", {}, True),
            ("{modality: MR}", {}, "modality"),
            ("{description: 'abdomen.*contrast'}", {}, True),
            ("{description: '^head'}", {}, "description"),
            ("{site: [S5]}", {}, "site"),
            ("{site_kind: hub}", {}, True),
            ("{patient_class: [ED]}", {"patient_class": "ed"}, True),
            ("{patient_age: {under: 18}}", {"patient_age_years": 17.9}, True),
            ("{patient_age: {under: 18}}", {"patient_age_years": 18}, "patient_age"),
            ("{patient_age: {at_least: 65}}", {}, "patient_age"),
            ("{flags_none: [AI_PE]}", {"flags": {"AI_PE"}}, "flags_none"),
            ("{order: {department: '^ED$'}}", {"order": {"department": "ed"}}, True),
            ("{order: {department: 'ED'}}", {}, "order.department"),
            ("{days: mon-fri}", {}, True),
            ("{days: [sat, sun]}", {}, "days"),
            # 15:00 UTC is 10:00 in New York (H1) and 07:00 in Los Angeles (S5): site-local time counts.
            ("{time_of_day: {start: '09:00', end: '17:00'}}", {}, True),
            ("{time_of_day: {start: '09:00', end: '17:00'}}", {"site": "S5"}, "time_of_day"),
            ("{time_of_day: {start: '22:00', end: '07:30'}}", {"site": "S5"}, True),
        ],
    )
    def test_match_fields(self, match: str, facts: dict[str, Any], expected: bool | str) -> None:
        sel = select(f"version: 1\nname: t\nrules:\n  - id: r\n    match: {match}\n", case(**facts))
        assert sel.trace[0]["failed"] == (None if expected is True else expected)

    def test_priority_from_order_else_rules_else_default(self) -> None:
        compiled = rules(
            """
version: 1
name: t
defaults: {priority: routine}
priority_rules:
  - {id: stroke, match: {description: stroke}, priority: critical}
  - {id: ed, match: {patient_class: [ED, E]}, priority: stat}
"""
        )
        h1 = SITES["H1"]
        assert priority_from_rules(compiled, case(priority="urgent", patient_class="ED"), h1, NOW) == (
            Priority.URGENT,
            "order",
        )
        assert priority_from_rules(compiled, case(priority=None, patient_class="E"), h1, NOW) == (
            Priority.STAT,
            "priority rule ed",
        )
        stroke = case(priority=None, patient_class="ED", description="CT head STROKE protocol")
        assert priority_from_rules(compiled, stroke, h1, NOW)[0] is Priority.CRITICAL
        assert priority_from_rules(compiled, case(priority=None), h1, NOW) == (Priority.ROUTINE, "defaults.priority")
