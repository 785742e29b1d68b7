"""A report for people: HTML (for the referrer's browser) and PDF (fpdf2, pure Python).

Both show what the referrer must be able to rely on: patient and study,
each section in the template's order, the status in words (a preliminary
says so loudly), who signed and when, and every addendum after the text it
amends. The HTML is autoescaped by Jinja2, so report text can never become
markup. The PDF uses the standard PDF fonts, which cover Latin-1; other
characters are transliterated (é stays, → becomes ->) rather than dropped.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from fpdf import FPDF
from jinja2 import Environment

from readingroom.collab.report_reads import ReportDocument

STATUS_WORDS = {"draft": "DRAFT — not signed", "preliminary": "PRELIMINARY — may change",
                "final": "Final", "addendum": "Final, with addendum"}

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ doc.template_title }} — {{ name }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:48rem;margin:2rem auto;line-height:1.45;color:#111}
header{border-bottom:2px solid #333;margin-bottom:1rem} .status{font-weight:bold}
.status.preliminary,.status.draft{color:#b00} dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{font-weight:600} h2{font-size:1rem;text-transform:uppercase;margin:1.2rem 0 .3rem} p{white-space:pre-wrap;margin:0}
.addendum{border-left:4px solid #888;padding-left:.8rem;margin-top:1.2rem} footer{margin-top:2rem;color:#444}
</style></head>
<body><article>
<header><h1>{{ doc.template_title }}</h1>
<p class="status {{ doc.kind }}">{{ status }}</p>
<dl>
<dt>Patient</dt><dd>{{ name }} ({{ doc.patient_id }}){% if doc.birth_date %}, born {{ born }}{% endif %}</dd>
<dt>Study</dt><dd>{{ doc.modality }} {{ doc.body_part }} {{ doc.description }}{% if study_date %},
 {{ study_date }}{% endif %}</dd>
<dt>Accession</dt><dd>{{ doc.accession_number }}</dd>
{% if doc.ordering_physician %}<dt>Ordered by</dt><dd>{{ doc.ordering_physician|replace("^", " ") }}</dd>{% endif %}
<dt>Site</dt><dd>{{ doc.site_name }}</dd>
</dl></header>
{% for s in sections %}<section><h2>{{ s.title }}</h2><p>{{ s.text }}</p></section>
{% endfor %}
{% for a in doc.addenda %}<section class="addendum"><h2>Addendum</h2><p>{{ a.text }}</p>
<p><small>Signed by {{ a.signer }}, {{ stamp(a.signed_at) }}</small></p></section>
{% endfor %}
<footer>{% if doc.signer %}{{ "Signed" if doc.kind != "draft" else "Written" }} by {{ doc.signer }},
 {{ stamp(signed_at) }}{% else %}Draft by {{ doc.author }}, {{ stamp(doc.created_at) }}{% endif %}
 · report version {{ doc.number }}</footer>
</article></body></html>
"""
_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_TEMPLATE = _ENV.from_string(_HTML)


def _stamp(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _dicom_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def _signed_at(doc: ReportDocument) -> datetime:
    """When the text shown was signed: the final's time for an addended report, else the version's."""
    return doc.final_signed_at if doc.kind == "addendum" and doc.final_signed_at else doc.created_at


def to_html(doc: ReportDocument) -> str:
    return _TEMPLATE.render(
        doc=doc, status=STATUS_WORDS.get(doc.kind, doc.kind), name=doc.patient_name.replace("^", " ").strip(),
        born=_dicom_date(doc.birth_date), study_date=_dicom_date(doc.study_date),
        sections=[s for s in doc.sections if s.text.strip()], stamp=_stamp, signed_at=_signed_at(doc))


_PDF_REPLACEMENTS = {"—": "-", "–": "-", "→": "->", "←": "<-", "≥": ">=", "≤": "<=", "“": '"', "”": '"',
                     "‘": "'", "’": "'", "…": "...", "•": "-"}


def _latin1(text: str) -> str:
    """Text the standard PDF fonts can draw: Latin-1 as is, the rest transliterated or '?'."""
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch)
        elif ch in _PDF_REPLACEMENTS:
            out.append(_PDF_REPLACEMENTS[ch])
        else:
            base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            out.append(base or "?")
    return "".join(out)


def to_pdf(doc: ReportDocument) -> bytes:
    """The report as an A4 PDF document."""
    pdf = FPDF(format="A4")
    pdf.set_title(_latin1(f"{doc.template_title} - {doc.accession_number}"))
    pdf.set_creator("ReadingRoom")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.epw

    def line(text: str, *, size: int = 10, style: str = "", height: float = 5) -> None:
        pdf.set_font("Helvetica", style=style, size=size)
        pdf.multi_cell(width, height, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    line(doc.template_title, size=16, style="B", height=8)
    line(STATUS_WORDS.get(doc.kind, doc.kind), style="B")
    name = doc.patient_name.replace("^", " ").strip()
    line(f"Patient: {name} ({doc.patient_id})" + (f", born {_dicom_date(doc.birth_date)}" if doc.birth_date else ""))
    line(f"Study: {doc.modality} {doc.body_part} {doc.description} {_dicom_date(doc.study_date)}".strip())
    line(f"Accession: {doc.accession_number}    Site: {doc.site_name}")
    if doc.ordering_physician:
        line(f"Ordered by: {doc.ordering_physician.replace('^', ' ').strip()}")
    pdf.ln(3)
    for section in doc.sections:
        if section.text.strip():
            line(section.title.upper(), style="B", size=11, height=6)
            line(section.text)
            pdf.ln(2)
    for addendum in doc.addenda:
        line("ADDENDUM", style="B", size=11, height=6)
        line(addendum.text)
        line(f"Signed by {addendum.signer}, {_stamp(addendum.signed_at)}", size=8)
        pdf.ln(2)
    who = doc.signer or doc.author
    line(f"{'Signed' if doc.signer else 'Draft'} by {who}, {_stamp(_signed_at(doc))} - report version {doc.number}",
         size=8)
    return bytes(pdf.output())
