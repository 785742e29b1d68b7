"""Queueing formulas the simulator is checked against (M/M/c, Erlang C).

With Poisson arrivals (rate λ), exponential reads (mean 1/μ) and c readers
sharing one queue, a = λ/μ and ρ = a/c < 1:
P(wait) = C(c, a), the mean wait W_q = C(c, a) / (cμ − λ) and
P(W_q > t) = C(c, a)·exp(−(cμ − λ)t). c separate single-reader queues each
wait ρ/(μ − λ/c): the pooling gain is the ratio of the two. If the simulator's
queues, clocks and arrival process are right, long runs reproduce these
numbers; tests assert it (tests/simulator/test_theory.py).
"""

from __future__ import annotations

import math


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits, for c servers and offered load a (Erlangs); needs a < c."""
    if c <= 0 or a < 0:
        raise ValueError("c must be positive and a non-negative")
    if a >= c:
        return 1.0
    # Erlang B by its stable recursion, then C = B / (1 - ρ(1 - B)).
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho * (1 - b))


def mean_wait(c: int, arrival_rate: float, mean_service: float) -> float:
    """W_q of M/M/c (same time unit as ``mean_service``); infinite when the queue is unstable."""
    mu = 1.0 / mean_service
    if arrival_rate >= c * mu:
        return math.inf
    return erlang_c(c, arrival_rate / mu) / (c * mu - arrival_rate)


def wait_exceeds(c: int, arrival_rate: float, mean_service: float, t: float) -> float:
    """P(W_q > t) of M/M/c."""
    mu = 1.0 / mean_service
    if arrival_rate >= c * mu:
        return 1.0
    return erlang_c(c, arrival_rate / mu) * math.exp(-(c * mu - arrival_rate) * t)


def separate_queues_wait(c: int, arrival_rate: float, mean_service: float) -> float:
    """Mean wait when the same arrivals are split evenly over c single-reader queues (M/M/1 each)."""
    return mean_wait(1, arrival_rate / c, mean_service)


def hourly_erlang_wait(arrivals_per_hour: list[float], readers_per_hour: list[int], mean_read: float) -> list[float]:
    """The hour-by-hour Erlang C mean wait (minutes) of an ideal pool: B4's theoretical companion.

    Each hour is taken as stationary (a fluid approximation that ignores backlog carried over), so at
    overloaded hours the value is infinite: the backlog then grows, and the simulation shows by how much.
    """
    return [mean_wait(c, lam / 60.0, mean_read) if c > 0 else math.inf
            for lam, c in zip(arrivals_per_hour, readers_per_hour, strict=True)]
