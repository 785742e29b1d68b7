"""Report templates: structured sections, pick lists and macros per modality and body part.

Templates are YAML documents shipped inside the package
(``collab/report_templates/*.yaml``), validated by Pydantic when first
loaded, so a broken template fails the first test that touches it rather
than a reader at 3 a.m. A template names the sections of a report in
reading order; a ``choice`` section only takes one of its ``options`` (pick
list); macros (``.normal``) are expanded on save, per section first and then
template-wide, so a reader types ``.normal`` in Findings and gets that
template's normal findings text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

MACRO = re.compile(r"(?<!\S)(\.[a-z][a-z0-9_-]*)(?!\S)")
#: Longest text of one section (a whole report is a few kB; this bounds a malicious PUT).
MAX_SECTION_CHARS = 20_000


class TemplateError(ValueError):
    """A template or a report document does not fit its template (answered 422)."""


class SectionSpec(BaseModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)
    title: str
    kind: Literal["text", "choice"] = "text"
    options: list[str] = []
    required: bool = False
    default: str = ""
    macros: dict[str, str] = {}

    @model_validator(mode="after")
    def _choice_has_options(self) -> SectionSpec:
        if self.kind == "choice" and not self.options:
            raise ValueError(f"choice section {self.id!r} needs options")
        return self


class ReportTemplate(BaseModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$", max_length=64)
    title: str
    modalities: list[str] = Field(default=[], description="empty: any modality")
    body_parts: list[str] = Field(default=[], description="empty: any body part")
    macros: dict[str, str] = {}
    sections: list[SectionSpec] = Field(min_length=1)

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.upper() for v in values]

    @model_validator(mode="after")
    def _unique_sections(self) -> ReportTemplate:
        ids = [s.id for s in self.sections]
        if len(ids) != len(set(ids)):
            raise ValueError(f"template {self.id!r} repeats a section id")
        return self

    def section(self, section_id: str) -> SectionSpec | None:
        return next((s for s in self.sections if s.id == section_id), None)

    def score(self, modality: str, body_part: str) -> int:
        """How well the template fits (-1: not at all): a named modality and body part beat wildcards."""
        m, b = modality.upper(), body_part.upper()
        if self.modalities and m not in self.modalities:
            return -1
        if self.body_parts and b not in self.body_parts:
            return -1
        return (2 if self.modalities else 0) + (1 if self.body_parts else 0)


@functools.cache
def all_templates() -> dict[str, ReportTemplate]:
    """Every packaged template by id (loaded once)."""
    found: dict[str, ReportTemplate] = {}
    for entry in sorted(resources.files("readingroom.collab").joinpath("report_templates").iterdir(),
                        key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        try:
            template = ReportTemplate.model_validate(yaml.safe_load(entry.read_text("utf-8")))
        except (ValidationError, yaml.YAMLError) as exc:
            raise TemplateError(f"report template {entry.name}: {exc}") from exc
        if template.id in found:
            raise TemplateError(f"report template id {template.id!r} is used twice")
        found[template.id] = template
    return found


def find_templates(modality: str | None = None, body_part: str | None = None) -> list[ReportTemplate]:
    """Templates that fit the filters (a wildcard template fits everything), most specific first."""
    m, b = (modality or "").upper(), (body_part or "").upper()
    fits = []
    for t in all_templates().values():
        if (m and t.modalities and m not in t.modalities) or (b and t.body_parts and b not in t.body_parts):
            continue
        fits.append(((2 if m and t.modalities else 0) + (1 if b and t.body_parts else 0), t))
    return [t for _, t in sorted(fits, key=lambda st: (-st[0], st[1].id))]


def best_template(modality: str, body_part: str) -> ReportTemplate:
    """The most specific template for a case (the generic one when nothing more specific fits)."""
    candidates = [(t.score(modality, body_part), t.id, t) for t in all_templates().values()]
    return max((c for c in candidates if c[0] >= 0), key=lambda c: (c[0], -len(c[2].sections), c[1]))[2]


def get_template(template_id: str) -> ReportTemplate:
    try:
        return all_templates()[template_id]
    except KeyError:
        raise TemplateError(f"no report template {template_id!r}") from None


def initial_sections(template: ReportTemplate) -> dict[str, str]:
    """The sections of a new report: each section's default text (empty where none)."""
    return {s.id: s.default for s in template.sections}


def expand_macros(template: ReportTemplate, section: SectionSpec, text: str) -> str:
    """Replace each stand-alone macro token (``.normal``) by its text; unknown tokens stay as typed."""
    def sub(match: re.Match[str]) -> str:
        token = match.group(1)
        return section.macros.get(token) or template.macros.get(token) or token

    return MACRO.sub(sub, text)


def conform(template: ReportTemplate, sections: dict[str, str]) -> dict[str, str]:
    """The document as stored: known sections only, in template order, macros expanded, picks checked.

    Raises TemplateError naming every problem (an unknown section, a pick
    that is not one of the options, an oversized text), so the client can fix
    them all at once and nothing is stored.
    """
    problems = [f"unknown section {key!r} (template {template.id} has "
                f"{', '.join(s.id for s in template.sections)})" for key in sections if template.section(key) is None]
    out: dict[str, str] = {}
    for spec in template.sections:
        value = sections.get(spec.id, "")
        if not isinstance(value, str):
            problems.append(f"section {spec.id!r} must be text")
            continue
        if len(value) > MAX_SECTION_CHARS:
            problems.append(f"section {spec.id!r} is longer than {MAX_SECTION_CHARS} characters")
            continue
        if spec.kind == "choice":
            if value and value not in spec.options:
                problems.append(f"section {spec.id!r} must be one of {spec.options}, not {value!r}")
            out[spec.id] = value
        else:
            out[spec.id] = expand_macros(template, spec, value)
    if problems:
        raise TemplateError("; ".join(problems))
    return out


def missing_required(template: ReportTemplate, sections: dict[str, str]) -> list[str]:
    """Required sections still empty (a report cannot be signed with any)."""
    return [s.id for s in template.sections if s.required and not (sections.get(s.id) or "").strip()]
