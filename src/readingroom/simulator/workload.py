"""A reading network's workload, as the simulator reads it.

The format is the reference workload's (``../shared/workload/reference.yaml``,
copied to ``examples/simulator/reference-workload.yaml``): sites with volumes
and patient-class mixes, hourly arrival curves in site-local time, modality,
priority and exam-type mixes, reading-time distributions, reader effects, AI
triage models, SLAs and the readers with their licences, privileges and shifts.
Validated once by Pydantic so a typo fails at load with its location rather
than as a strange result hours later. A few loose spots of the format (an
exam type without a reading time, ``wrvu`` beside the exam types, AI
``applies`` expressions) are normalised here so the engine sees plain data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from readingroom.simulator.records import PRIORITIES

CLASSES = ("ED", "IP", "OP")


class WorkloadError(ValueError):
    """A workload file that cannot be used, with the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Calendar(_Model):
    start: datetime
    days: int = Field(default=14, gt=0)
    weekend_multiplier: dict[str, float] = Field(default_factory=lambda: {c: 1.0 for c in CLASSES})
    day_to_day_cv: float = Field(default=0.0, ge=0)

    @field_validator("start", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, str) and value.endswith("Z"):
            value = value[:-1] + "+00:00"
        return value


class Site(_Model):
    name: str = ""
    state: str
    tz: str
    studies_per_weekday: float = Field(ge=0)
    class_mix: dict[str, float]
    peds_share: float = Field(default=0.0, ge=0, le=1)


@dataclass(frozen=True)
class Exam:
    """One exam type of a modality: its share, subspecialty tag, lognormal reading time and work units."""

    modality: str
    name: str
    p: float
    tag: str
    mean: float
    cv: float
    wrvu: float
    force_priority: str | None = None


@dataclass(frozen=True)
class AiModel:
    """An AI triage model: which studies it reads, how often the finding is there, how well it sees it."""

    name: str
    modality: str
    exam: str
    classes: frozenset[str]
    prevalence: float
    sens: float
    spec: float
    floor: str


class Reader(_Model):
    id: str
    home: str
    tz: str | None = None
    sub: list[str] = Field(default_factory=list)
    lic: list[str] = Field(default_factory=list)
    priv: list[str] = Field(default_factory=list)
    shift: tuple[float, float]
    quals: list[str] = Field(default_factory=list)

    @property
    def remote(self) -> bool:
        return self.home.upper().startswith("REMOTE")


class ReaderEffects(_Model):
    speed_sigma: float = 0.0
    mismatch: float = 1.0
    familiarity: float = 1.0
    familiarity_reads: int = 30
    night_fatigue: float = 1.0
    discretion: float = 1.0
    productive_onsite: float = 1.0
    productive_remote: float = 1.0
    queue_cap: int = 2
    peds_nonpeds: float = 1.0


@dataclass(frozen=True)
class Workload:
    """Everything the engine needs, normalised."""

    name: str
    calendar: Calendar
    replications: int
    sites: dict[str, Site]
    arrival_curves: dict[str, tuple[float, ...]]
    op_batch_prob: float
    op_batch_size: tuple[int, int]
    modality_mix: dict[str, dict[str, float]]
    priority_mix: dict[str, dict[str, float]]
    exams: dict[str, tuple[Exam, ...]]
    effects: ReaderEffects
    transfer: dict[str, float]
    consult_rate: float
    consult_time: tuple[float, float]
    critical_rate: float
    critical_rate_ed_ct: float
    call_time: tuple[float, float]
    ai_latency: float
    ai_models: tuple[AiModel, ...]
    sla: dict[str, float]
    readers: tuple[Reader, ...]
    night_contracts: dict[str, tuple[str, ...]]
    #: "lognormal" (the reference) or "exponential" (theory checks: M/M/c)
    read_distribution: str = "lognormal"

    def site_of(self, code: str) -> Site:
        return self.sites[code]


_APPLIES = re.compile(r"^\s*(?P<mod>\w+)\.(?P<exam>\w+)\s*(?:&\s*\(?(?P<classes>[\w|\s]+)\)?)?\s*$")


def _pair(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value), 0.0
    return float(value[0]), float(value[1])


def _exams(raw: dict[str, Any]) -> dict[str, tuple[Exam, ...]]:
    """Exam types per modality; an exam without ``t`` reads like its modality's mean exam."""
    out: dict[str, tuple[Exam, ...]] = {}
    for modality, block in raw.items():
        if not isinstance(block, dict) or modality.startswith("pediatric"):
            continue
        wrvu = float(block.get("wrvu", 1.0))
        entries = {k: v for k, v in block.items() if isinstance(v, dict)}
        timed = [(float(v["p"]), *_pair(v["t"], (0, 0))) for v in entries.values() if "t" in v]
        total_p = sum(p for p, _, _ in timed) or 1.0
        mean = sum(p * m for p, m, _ in timed) / total_p if timed else 5.0
        cv = sum(p * c for p, _, c in timed) / total_p if timed else 0.6
        exams = []
        for name, v in entries.items():
            m, c = _pair(v.get("t"), (mean, cv))
            exams.append(Exam(modality.upper(), name, float(v["p"]), str(v.get("tag", name)).lower(), m, c, wrvu,
                              v.get("force_priority")))
        norm = sum(e.p for e in exams)
        if norm <= 0:
            raise WorkloadError(f"exam_types.{modality}: shares add up to 0")
        out[modality.upper()] = tuple(Exam(e.modality, e.name, e.p / norm, e.tag, e.mean, e.cv, e.wrvu,
                                           e.force_priority) for e in exams)
    return out


def _ai(raw: dict[str, Any]) -> tuple[float, tuple[AiModel, ...]]:
    models = []
    floors = raw.get("positive_priority_floor", {})
    for name, spec in (raw.get("models") or {}).items():
        found = _APPLIES.match(str(spec["applies"]))
        if not found:
            raise WorkloadError(f"ai_triage.models.{name}.applies: cannot read {spec['applies']!r} "
                                "(expected e.g. 'CT.head_nc' or 'CR.chest & (ED|IP)')")
        classes = found.group("classes")
        models.append(AiModel(name, found.group("mod").upper(), found.group("exam"),
                              frozenset(c.strip().upper() for c in classes.split("|")) if classes else frozenset(),
                              float(spec["prevalence"]), float(spec["sens"]), float(spec["spec"]),
                              str(floors.get(name, "P2"))))
    return float(raw.get("ai_latency", 0)), tuple(models)


def _effects(raw: dict[str, Any]) -> ReaderEffects:
    speed = raw.get("speed_multiplier") or {}
    productive = raw.get("productive_fraction") or {}
    return ReaderEffects(
        speed_sigma=float(speed.get("sigma", 0.0)),
        mismatch=float(raw.get("subspecialty_mismatch_multiplier", 1.0)),
        familiarity=float(raw.get("site_familiarity_multiplier_first_30_reads", 1.0)),
        night_fatigue=float(raw.get("night_fatigue_multiplier_after_0200_local", 1.0)),
        discretion=float(raw.get("discretion_penalty_when_deviating", 1.0)),
        productive_onsite=float(productive.get("onsite", 1.0)),
        productive_remote=float(productive.get("remote", 1.0)),
        queue_cap=int(raw.get("personal_queue_cap", 2)),
    )


def _normalised(mix: dict[str, float], where: str) -> dict[str, float]:
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise WorkloadError(f"{where}: shares must be >= 0 and not all 0")
    return {k: v / total for k, v in mix.items()}


def _mixes(data: dict[str, Any], block: str) -> dict[str, dict[str, float]]:
    return {c: _normalised(m, f"{block}.{c}") for c, m in data[block].items()}


def parse_workload(data: dict[str, Any], name: str = "workload") -> Workload:
    """Validate and normalise a parsed workload document."""
    try:
        calendar_raw = dict(data["calendar"])
        noise = calendar_raw.pop("day_to_day_noise", None) or {}
        calendar = Calendar(**calendar_raw, day_to_day_cv=float(noise.get("cv", 0.0)))
        sites = {code: Site(**spec) for code, spec in data["sites"].items()}
        readers = tuple(Reader(**r) for r in data["readers"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise WorkloadError(f"{name}: {exc}") from exc
    curves_raw = dict(data["arrival_curves_local_pct"])
    batching = curves_raw.pop("outpatient_batching", {}) or {}
    curves = {}
    for cls, curve in curves_raw.items():
        if len(curve) != 24:
            raise WorkloadError(f"arrival_curves_local_pct.{cls}: needs 24 hourly values, got {len(curve)}")
        total = sum(curve)
        curves[cls.upper()] = tuple(float(v) / total for v in curve)
    effects = _effects(data.get("reader_effects") or {})
    peds = (data.get("exam_types") or {}).get("pediatric_overlay") or {}
    effects = effects.model_copy(update={"peds_nonpeds": float(peds.get("readtime_multiplier_nonpeds", 1.0))})
    consults = data.get("consults") or {}
    critical = data.get("critical_results") or {}
    ai_latency, ai_models = _ai(data.get("ai_triage") or {})
    sla = {p: float(v) for p, v in (data.get("sla_minutes") or {}).items()}
    missing = [p for p in PRIORITIES if p not in sla]
    if missing:
        raise WorkloadError(f"sla_minutes: missing {', '.join(missing)}")
    for code in sites:
        sites[code] = sites[code].model_copy(update={"class_mix": _normalised(sites[code].class_mix,
                                                                               f"sites.{code}.class_mix")})
    return Workload(
        name=str(data.get("benchmark", name)),
        calendar=calendar,
        replications=int(data.get("replications", 1)),
        sites=sites,
        arrival_curves=curves,
        op_batch_prob=float(batching.get("prob_batch", 0.0)),
        op_batch_size=tuple(int(x) for x in batching.get("batch_size", [1, 1])),  # type: ignore[arg-type]
        modality_mix=_mixes(data, "modality_mix_by_class"),
        priority_mix=_mixes(data, "priority_mix_by_class"),
        exams=_exams(data["exam_types"]),
        effects=effects,
        transfer={k: float(v) for k, v in (data.get("transfer_latency") or {}).items()},
        consult_rate=float(consults.get("rate", 0.0)),
        consult_time=_pair(consults.get("extra_read"), (0.0, 0.0)),
        critical_rate=float(critical.get("cat1_rate_overall", 0.0)),
        critical_rate_ed_ct=float(critical.get("cat1_rate_ED_CT", critical.get("cat1_rate_overall", 0.0))),
        call_time=_pair(critical.get("call_time"), (0.0, 0.0)),
        ai_latency=ai_latency,
        ai_models=ai_models,
        sla=sla,
        readers=readers,
        night_contracts={k: tuple(v) for k, v in (data.get("night_contracts_for_B0") or {}).items()},
        read_distribution=str(data.get("read_distribution", "lognormal")),
    )


def load_workload(path: Path) -> Workload:
    """Read a workload YAML file (see the module docstring for the format)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WorkloadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkloadError(f"{path}: not a workload document (expected a mapping)")
    try:
        return parse_workload(data, path.stem)
    except KeyError as exc:
        raise WorkloadError(f"{path}: missing block {exc}") from exc


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and coefficient of variation."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def start_utc(workload: Workload) -> datetime:
    start = workload.calendar.start
    return start if start.tzinfo else start.replace(tzinfo=UTC)
