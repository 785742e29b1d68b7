"""What one simulation run leaves behind, in columns.

The engine appends one row per study and per reader as it runs; metrics and
the report read these columns with numpy, so summarising a run of 20,000
studies costs milliseconds and never loops in Python over rows. Studies carry
the same ``study`` id under every policy (common random numbers), so two
policies can be compared study by study (the AI gain, the bound gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Priorities of the workload, most urgent first (P1 critical, P2 STAT, P3 urgent, P4 routine).
PRIORITIES = ("P1", "P2", "P3", "P4")

#: Columns of :attr:`RunRecords.cases`, with their meaning. Times are minutes.
CASE_COLUMNS: dict[str, str] = {
    "study": "int: the study's id, the same under every policy of one replication",
    "priority": "str P1..P4: the study's own priority (before any AI raise or aging)",
    "modality": "str: CR, CT, US, MR, MG, NM, RF",
    "exam": "str: exam type within the modality (e.g. head_nc)",
    "subspecialty": "str: the exam's subspecialty tag",
    "site": "str: the site the study was acquired at",
    "patient_class": "str: ED, IP or OP",
    "local_hour": "int 0..23: the site's local hour when the study became ready",
    "ready": "float: minutes since the simulation start when the study became ready to read",
    "done": "bool: the report the SLA counts (P1/P2 first report, P3/P4 final) happened before the end",
    "tat": "float: ready -> that report (for unfinished studies: ready -> end of the run, censored)",
    "transfer": "float: minutes spent moving the study to the reader's site (transfer latency)",
    "wait": "float: minutes waiting in a queue before the read started",
    "read": "float: minutes of reading (including a critical-result call)",
    "consult": "float: minutes of a consult that held back the final (P3/P4), else 0",
    "sla": "float: the SLA target in minutes for the study's priority",
    "ai": "str: 'tp', 'fp', 'fn', 'tn' for studies an AI model applies to, '' otherwise",
    "reader": "str: who read it ('' if unread)",
    "subspecialty_match": "bool: the reader holds the exam's subspecialty",
    "remote": "bool: the reader was not at the study's site (another site or a remote reader)",
    "reroutes": "int: how many times the study was routed again after its first routing",
    "escalations": "int: escalation steps taken for it",
    "overflowed": "bool: it went to the hub/overflow pool",
    "violation": "bool: read by a reader without the licence or privilege for its site (must never be true)",
    "explained": "bool: every routing decision about it stored an explanation",
}

#: Columns of :attr:`RunRecords.readers`.
READER_COLUMNS: dict[str, str] = {
    "reader": "str: reader id",
    "home": "str: home site (or REMOTE_*)",
    "on_shift": "float: minutes on shift during the measured period",
    "busy": "float: minutes reading during the measured period",
    "reads": "int: studies read",
}

#: Columns of :attr:`RunRecords.queue` (one row per sample, every ``queue_step`` minutes).
QUEUE_COLUMNS: dict[str, str] = {
    "time": "float: minutes since the start",
    "utc_hour": "int 0..23",
    "P1": "int: unread P1 studies waiting", "P2": "int", "P3": "int", "P4": "int",
}


@dataclass
class RunRecords:
    """One policy, one replication: per-study, per-reader and queue-depth columns plus counters.

    ``counters`` holds: ``decisions`` (routing decisions made), ``explained`` (of them, with a stored
    explanation), ``reroutes``, ``escalations``, ``overflows``, ``violations`` (licence or privilege),
    ``backlog_0700`` (mean unread P3/P4 studies per site at 07:00 site-local, over the measured days)
    and ``measured_from`` / ``measured_to`` (minutes: the warm-up is excluded from every column).
    """

    policy: str
    replication: int
    cases: dict[str, np.ndarray] = field(default_factory=dict)
    readers: dict[str, np.ndarray] = field(default_factory=dict)
    queue: dict[str, np.ndarray] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cases.get("study", ()))

    def select(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The case columns restricted to ``mask``."""
        return {name: column[mask] for name, column in self.cases.items()}


def columns(rows: list[dict[str, Any]], names: dict[str, str]) -> dict[str, np.ndarray]:
    """Rows (dicts) -> numpy columns in the order of ``names``; strings become unicode arrays."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = [row[name] for row in rows]
        out[name] = np.array(values) if values else np.array([], dtype=float)
    return out
