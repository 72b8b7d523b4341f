"""Intervals and tests for the quality sweep (Student-t over seeds, paired t-tests, Holm's correction) and for
timings (a distribution-free interval for a median).

Each metric is measured once per seed (fresh noise, fresh real reference); the seed interval says how far
another run would land. Settings are compared seed by seed (same noise, same reference), and the p-values
of one table are Holm-adjusted together. No image bootstrap: resampling images with replacement inflates FD
(duplicates lower the sample's spread), so its intervals missed their own point estimates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval."""

    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def format(self, digits: int) -> str:
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def t_quantile(confidence: float, degrees_of_freedom: int) -> float:
    """Two-sided Student-t critical value, e.g. 4.303 for 95 % and 2 degrees of freedom."""
    try:
        from scipy.stats import t
    except ImportError:
        raise ImportError("Confidence intervals need SciPy: pip install 'smoothed-energy-guidance[eval]'.") from None
    return float(t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of per-seed values with the Student-t interval (needs at least two seeds)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        raise ValueError("An interval over seeds needs at least two seeds.")
    mean = float(values.mean())
    half = t_quantile(confidence, len(values) - 1) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def paired_t_test(differences: Sequence[float], confidence: float = 0.95) -> tuple[Interval, float]:
    """The mean of seed-by-seed differences with its Student-t interval, and the two-sided p-value of
    "the mean difference is 0" (a paired t-test; at least two seeds)."""
    try:
        from scipy.stats import t
    except ImportError:
        raise ImportError("Paired tests need SciPy: pip install 'smoothed-energy-guidance[eval]'.") from None
    interval = seed_interval(differences, confidence)
    values = np.asarray(differences, dtype=np.float64)
    spread = float(values.std(ddof=1)) / math.sqrt(len(values))
    if spread == 0:
        return interval, 0.0 if interval.mean != 0 else 1.0
    statistic = interval.mean / spread
    return interval, float(2 * t.sf(abs(statistic), len(values) - 1))


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The median with its distribution-free interval: the order statistics ``[x(k), x(n + 1 - k)]`` with the
    largest ``k`` whose binomial coverage is still at least ``confidence`` (for timings, whose noise on a shared
    machine is skewed and heavy-tailed, where a Student-t interval is not valid). Needs enough values for that
    coverage (6 for 95 %).
    """
    try:
        from scipy.stats import binom
    except ImportError:
        raise ImportError("Intervals need SciPy: pip install 'smoothed-energy-guidance[eval]'.") from None
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    count = len(ordered)
    # the interval [x(k), x(n+1-k)] misses the median with probability 2·P(Binomial(n, ½) ≤ k − 1)
    k = 0
    while k + 1 <= (count + 1) // 2 and 1 - 2 * binom.cdf(k, count, 0.5) >= confidence:
        k += 1
    if k == 0:
        raise ValueError(f"A {confidence:.0%} interval for a median needs more than {count} values.")
    return Interval(float(np.median(ordered)), float(ordered[k - 1]), float(ordered[count - k]))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise error rate), in the order given.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.2])]
    [0.04, 0.09, 0.09, 0.2]
    """
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
