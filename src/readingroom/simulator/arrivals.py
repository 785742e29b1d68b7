"""The studies of one replication, drawn once and shared by every policy.

Common random numbers: every random quantity a study carries (when it
arrives, what it is, how long its base read takes, whether it holds a
finding and the AI sees it, a consult, a critical-result call) is drawn here
from a stream seeded by (seed, replication) alone, before any policy runs.
Policies therefore differ only in what they decide, so a difference between
two policies is the policies' doing, not the dice's, and far fewer
replications are needed to see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from readingroom.simulator.records import PRIORITIES
from readingroom.simulator.workload import AiModel, Exam, Workload, lognormal_params, start_utc

WARMUP_DAYS = 1


@dataclass(slots=True)
class Study:
    """One study to read, with every random draw it needs already made."""

    id: int
    site: str
    patient_class: str
    modality: str
    exam: Exam
    priority: str
    ready: float
    local_hour: int
    weekday: int
    peds: bool
    base_read: float
    call_time: float
    consult: float
    ai: str
    ai_flag: str
    ai_floor: str
    measured: bool


@dataclass(frozen=True, slots=True)
class Draws:
    """A replication's shared randomness: the studies and each reader's speed."""

    studies: list[Study]
    speed: dict[str, float]
    sim_start: datetime
    measured_from: float
    horizon: float


def streams(seed: int, replication: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for studies, readers and policies' own choices (e.g. B1's cherry-picking)."""
    root = np.random.SeedSequence([seed, replication])
    studies, readers, policy = root.spawn(3)
    return np.random.default_rng(studies), np.random.default_rng(readers), np.random.default_rng(policy)


def _choice(rng: np.random.Generator, mix: dict[str, float]) -> str:
    keys = list(mix)
    return keys[int(rng.choice(len(keys), p=np.array([mix[k] for k in keys])))]


def _read_time(rng: np.random.Generator, workload: Workload, mean: float, cv: float) -> float:
    if workload.read_distribution == "exponential":
        return float(rng.exponential(mean))
    if cv <= 0:
        return mean
    mu, sigma = lognormal_params(mean, cv)
    return float(rng.lognormal(mu, sigma))


def _ai_model(workload: Workload, study_class: str, exam: Exam) -> AiModel | None:
    for model in workload.ai_models:
        if model.modality == exam.modality and model.exam == exam.name and (
                not model.classes or study_class in model.classes):
            return model
    return None


def _arrival_minutes(rng: np.random.Generator, workload: Workload, site: str, cls: str, day: datetime,
                     expected: float, sim_start: datetime) -> list[float]:
    """Non-homogeneous Poisson arrivals over one local day (outpatients partly in batches)."""
    zone = ZoneInfo(workload.sites[site].tz)
    curve = workload.arrival_curves.get(cls)
    if curve is None:
        return []
    batch = workload.op_batch_prob if cls == "OP" else 0.0
    lo, hi = workload.op_batch_size
    mean_group = 1 + batch * ((lo + hi) / 2 - 1)
    local_midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    out: list[float] = []
    for hour, share in enumerate(curve):
        n = rng.poisson(expected * share / mean_group)
        if n == 0:
            continue
        hour_start = (local_midnight + timedelta(hours=hour) - sim_start).total_seconds() / 60
        for offset in np.sort(rng.uniform(0, 60, n)):
            size = int(rng.integers(lo, hi + 1)) if batch and rng.random() < batch else 1
            out.extend([hour_start + float(offset)] * size)
    return out


def draw(workload: Workload, seed: int, replication: int, days: int, load_scale: float = 1.0) -> Draws:
    """All studies of ``days`` measured days (plus the warm-up day before them) and the readers' speeds."""
    rng, reader_rng, _ = streams(seed, replication)
    first_day = start_utc(workload) - timedelta(days=WARMUP_DAYS)
    sim_start = first_day
    horizon = (WARMUP_DAYS + days) * 1440.0
    cal = workload.calendar
    raw: list[tuple[float, str, str]] = []
    for day_index in range(WARMUP_DAYS + days):
        day = first_day + timedelta(days=day_index)
        weekend = day.weekday() >= 5
        for code, site in workload.sites.items():
            noise = 1.0
            if cal.day_to_day_cv > 0:
                k = 1 / cal.day_to_day_cv**2
                noise = float(rng.gamma(k, 1 / k))
            for cls, share in site.class_mix.items():
                factor = cal.weekend_multiplier.get(cls, 1.0) if weekend else 1.0
                expected = site.studies_per_weekday * share * factor * noise * load_scale
                raw.extend((t, code, cls) for t in _arrival_minutes(rng, workload, code, cls, day, expected, sim_start))
    raw.sort()
    studies = [_study(rng, workload, i, t, code, cls, sim_start) for i, (t, code, cls) in enumerate(raw)
               if 0 <= t < horizon]
    for i, study in enumerate(studies):
        study.id = i
    effects = workload.effects
    speed = {r.id: float(reader_rng.lognormal(0.0, effects.speed_sigma)) if effects.speed_sigma else 1.0
             for r in workload.readers}
    return Draws(studies, speed, sim_start, WARMUP_DAYS * 1440.0, horizon)


def _study(rng: np.random.Generator, workload: Workload, index: int, t: float, site_code: str, cls: str,
           sim_start: datetime) -> Study:
    site = workload.sites[site_code]
    modality = _choice(rng, workload.modality_mix[cls])
    exams = workload.exams[modality]
    exam = exams[int(rng.choice(len(exams), p=np.array([e.p for e in exams])))]
    priority = exam.force_priority or _choice(rng, workload.priority_mix[cls])
    local = (sim_start + timedelta(minutes=t)).astimezone(ZoneInfo(site.tz))
    peds = bool(rng.random() < site.peds_share)
    base_read = _read_time(rng, workload, exam.mean, exam.cv)
    rate = workload.critical_rate_ed_ct if (cls == "ED" and modality == "CT") else workload.critical_rate
    call = _read_time(rng, workload, *workload.call_time) if rng.random() < rate else 0.0
    consult = _read_time(rng, workload, *workload.consult_time) if rng.random() < workload.consult_rate else 0.0
    ai, flag, floor = "", "", ""
    model = _ai_model(workload, cls, exam)
    u_present, u_detect = rng.random(), rng.random()
    if model is not None:
        present = u_present < model.prevalence
        positive = u_detect < model.sens if present else u_detect >= model.spec
        ai = ("tp" if positive else "fn") if present else ("fp" if positive else "tn")
        if positive:
            flag, floor = f"AI_{model.name.upper()}", model.floor
    if priority not in PRIORITIES:
        priority = "P4"
    return Study(index, site_code, cls, modality, exam, priority, t, local.hour, local.weekday(), peds, base_read,
                 call, consult, ai, flag, floor, t >= WARMUP_DAYS * 1440.0)
