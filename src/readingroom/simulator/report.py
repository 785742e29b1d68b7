"""The simulation report: comparison CSV/JSON, PNG plots and one self-contained HTML page.

The HTML embeds its plots as data URIs and its style inline, with no script
and no external reference, so it can be mailed, archived or opened on a
machine without network, and the dashboard can link it as it is.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from jinja2 import Environment, select_autoescape

from readingroom.simulator.metrics import Comparison
from readingroom.simulator.records import PRIORITIES, RunRecords

EXPLAINED = {
    "tat": "turnaround: study ready to the report the SLA counts (P1/P2 first report, P3/P4 final), minutes",
    "breach_rate": "share of studies whose turnaround exceeded the SLA of their priority",
    "breach_minutes": "mean minutes over the SLA among breached studies",
    "utilisation": "reading minutes / shift minutes per reader: mean, coefficient of variation, Gini",
    "violations": "reads by a reader without the licence or privilege for the site: must be 0",
    "explanation_coverage": "share of routing decisions stored with an explanation (100%)",
    "ai_gain": "B3 vs B2, AI true positives: minutes saved per study (same studies)",
    "ai_unflagged_delay": "B3 vs B2, unflagged AI-eligible studies: minutes added per study",
    "bound_gap": "(p90 of the policy - p90 of B4) / (p90 of B0 - p90 of B4): 0 = the ideal pool, 1 = site-local",
    "backlog_0700": "unread P3/P4 studies per site at 07:00 site-local",
}

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
.bad{background:#fdd;color:#900;font-weight:bold}.ci{color:#777;font-size:85%}img{max-width:100%}</style>
</head><body><h1>{{ title }}</h1>
<table>{% for k, v in meta.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Comparison (mean over replications, 95% interval)</h2>
<table><tr><th>metric</th>{% for p in policies %}<th>{{ p }}</th>{% endfor %}</tr>
{% for metric, cells in rows %}<tr><td>{{ metric }}</td>{% for p in policies %}{% set c = cells[p] %}
<td class="{{ 'bad' if metric == 'violations' and c and c[0] > 0 else '' }}">{% if c %}{{ '%.2f' % c[0] }}
{% if c[1] == c[1] %}<span class="ci">[{{ '%.2f' % c[1] }}, {{ '%.2f' % c[2] }}]</span>{% endif %}{% endif %}</td>
{% endfor %}</tr>{% endfor %}</table>
<h2>Plots</h2>{% for name, data in plots %}<h3>{{ name }}</h3>
<img alt="{{ name }}" src="data:image/png;base64,{{ data }}">
{% endfor %}<h2>What the metrics mean</h2><dl>{% for k, v in explained.items() %}<dt><b>{{ k }}</b></dt>
<dd>{{ v }}</dd>{% endfor %}</dl></body></html>"""


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return path


def plot_tat(runs: dict[str, list[RunRecords]], path: Path) -> Path:
    """TAT distributions per priority and policy (box plots, log scale)."""
    fig, axes = plt.subplots(1, len(PRIORITIES), figsize=(4 * len(PRIORITIES), 4), sharey=False)
    for ax, prio in zip(axes, PRIORITIES, strict=True):
        data = [np.concatenate([r.cases["tat"][r.cases["priority"] == prio] for r in reps]) for reps in runs.values()]
        ax.set_title(f"{prio} turnaround (min)")
        if not any(len(d) for d in data):
            ax.text(0.5, 0.5, "no studies", ha="center", transform=ax.transAxes)
            continue
        ax.boxplot([np.maximum(d, 0.1) if len(d) else np.array([math.nan]) for d in data], showfliers=False)
        ax.set_xticks(range(1, len(runs) + 1), list(runs), rotation=45)
        ax.set_yscale("log")
    return _save(fig, path)


def plot_hourly(comparison: Comparison, profile: str, ylabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4))
    for policy, values in comparison.hourly.get(profile, {}).items():
        finite = [v if math.isfinite(v) else math.nan for v in values]  # overloaded hours: no stationary wait
        ax.plot(range(24), finite, marker="o", label=policy, linestyle="--" if policy.startswith("Erlang") else "-")
    ax.set_xlabel("hour (UTC)" if "utc" in profile else "hour (site-local)")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _save(fig, path)


def plot_utilisation(runs: dict[str, list[RunRecords]], path: Path) -> Path:
    """Per-reader utilisation, grouped bars per policy (first replication)."""
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / max(1, len(runs))
    for i, (policy, reps) in enumerate(runs.items()):
        r = reps[0].readers
        util = np.where(r["on_shift"] > 0, r["busy"] / np.maximum(r["on_shift"], 1e-9), 0)
        ax.bar(np.arange(len(util)) + i * width, util, width, label=policy)
        ax.set_xticks(np.arange(len(util)) + 0.4, r["reader"].tolist(), rotation=90)
    ax.set_ylabel("reading / shift time")
    ax.legend()
    return _save(fig, path)


def plot_breaches(comparison: Comparison, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(comparison.policies))
    for i, policy in enumerate(comparison.policies):
        cells = [comparison.cell(f"breach_rate.{p}", policy) for p in PRIORITIES]
        ax.bar(np.arange(len(PRIORITIES)) + i * width, [c[0] if c else 0 for c in cells], width, label=policy)
    ax.set_xticks(np.arange(len(PRIORITIES)) + 0.4, PRIORITIES)
    ax.set_ylabel("SLA breach rate")
    ax.legend()
    return _save(fig, path)


def write_report(comparison: Comparison, runs: dict[str, list[RunRecords]], out_dir: Path, *, title: str,
                 meta: dict[str, Any]) -> Path:
    """Write comparison.csv/json, the PNG plots and report.html into ``out_dir``; returns report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.csv").write_text(comparison.to_csv())
    (out_dir / "comparison.json").write_text(comparison.to_json())
    plots = [
        ("Turnaround by priority and policy", plot_tat(runs, out_dir / "tat_by_priority.png")),
        ("Queue depth over the day", plot_hourly(comparison, "queue_depth_by_utc_hour", "unread studies",
                                                 out_dir / "queue_depth.png")),
        ("Mean wait by UTC hour (with the Erlang C prediction for the ideal pool)",
         plot_hourly(comparison, "wait_by_utc_hour", "minutes", out_dir / "wait_by_hour.png")),
        ("TAT p90 by site-local hour", plot_hourly(comparison, "tat_p90_by_local_hour", "p90 minutes",
                                                   out_dir / "tat_p90_by_hour.png")),
        ("Per-reader utilisation", plot_utilisation(runs, out_dir / "utilisation.png")),
        ("SLA breach rate by priority", plot_breaches(comparison, out_dir / "breaches.png")),
    ]
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.from_string(_PAGE).render(
        title=title, meta=meta, policies=comparison.policies, rows=comparison.table(), explained=EXPLAINED,
        plots=[(name, base64.b64encode(path.read_bytes()).decode()) for name, path in plots])
    page = out_dir / "report.html"
    page.write_text(html)
    return page
