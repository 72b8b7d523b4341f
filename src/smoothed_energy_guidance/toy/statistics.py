"""Intervals for the quality sweep: Student-t over seeds, percentile bootstrap over samples.

Each metric is measured once per seed (fresh noise, same settings); the seed interval says how far
another run would land. The bootstrap resamples the generated images of all seeds together and
recomputes the metric, which shows how much of the spread comes from the finite sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


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


def bootstrap_interval(
    metric: Callable[[torch.Tensor], float],
    samples: torch.Tensor,
    resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap of ``metric`` over the rows of ``samples`` (drawn with replacement).

    The resampling indices come from ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))``,
    so the interval is reproducible; the point estimate is the metric of the full sample.
    """
    rows = len(samples)
    indices = np.random.default_rng(seed).integers(0, rows, (resamples, rows))
    values = np.array([metric(samples[torch.from_numpy(index)]) for index in indices])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(metric(samples)), float(low), float(high))
