"""The sweep's statistics: paired tests, Holm's correction, KID, and intervals whose coverage is checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothed_energy_guidance.toy.evaluate import kernel_distance
from smoothed_energy_guidance.toy.statistics import holm, median_interval, paired_t_test, seed_interval


def test_holm_matches_its_definition_and_scipy_matches_the_paired_test():
    from scipy.stats import ttest_rel

    p = [0.02, 0.001, 0.04, 0.3, 0.011]
    m, order = len(p), np.argsort(p)
    expected = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):  # step-down: the largest (m − rank)·p so far, at most 1
        running = max(running, min(1.0, (m - rank) * p[index]))
        expected[index] = running
    assert holm(p) == pytest.approx(list(expected))
    assert holm([0.5]) == [0.5]
    a, b = [10.0, 12.5, 9.0, 11.0], [8.0, 11.0, 9.5, 7.0]
    interval, p_value = paired_t_test([x - y for x, y in zip(a, b, strict=True)])
    assert p_value == pytest.approx(ttest_rel(a, b).pvalue)
    assert interval.low <= interval.mean <= interval.high


def test_kid_is_unbiased_and_its_seed_interval_covers_the_truth_at_its_nominal_rate():
    """Real against real draws: KID's truth is 0. Over 200 simulated sweeps of 3 seeds each, the 95 % seed
    interval covers 0 in 95 % ± 4 % of them (a binomial band of about 2.5 standard errors)."""
    rng = np.random.default_rng(0)
    covered, means = 0, []
    for _ in range(200):
        per_seed = []
        for seed in range(3):
            real = torch.from_numpy(rng.normal(size=(64, 8)))
            other = torch.from_numpy(rng.normal(size=(64, 8)))
            per_seed.append(kernel_distance(real, other, subsets=4, seed=seed)[0])
        interval = seed_interval(per_seed)
        means.append(interval.mean)
        covered += interval.low <= 0.0 <= interval.high
    assert 0.91 <= covered / 200 <= 0.99
    assert abs(np.mean(means)) < 3 * np.std(means) / math.sqrt(len(means))  # unbiased: centred on 0
    shifted = kernel_distance(torch.from_numpy(rng.normal(size=(64, 8))), torch.from_numpy(rng.normal(1, 1, (64, 8))))
    assert shifted[0] > 10 * shifted[1] > 0  # a real difference stands far above its subset standard error


def test_median_interval_is_the_binomial_order_statistic_interval_and_covers_a_skewed_median():
    """Timings are skewed (a shared machine adds long stalls), so the benchmark tables use the median's
    distribution-free interval. Its ranks are the textbook ones (11 values: the 2nd and 10th, 98.8 %; 21: the
    6th and 16th, 97.3 %), and over 400 draws of 11 log-normal values it covers the true median at least 95 % of
    the time, within a binomial band of its exact coverage (98.8 %)."""
    from scipy.stats import binom

    assert median_interval(list(range(11))) == type(median_interval(list(range(11))))(5.0, 1.0, 9.0)
    interval = median_interval(list(range(21)))
    assert (interval.low, interval.mean, interval.high) == (5.0, 10.0, 15.0)
    with pytest.raises(ValueError, match="needs more than 5 values"):
        median_interval([1.0] * 5)
    rng = np.random.default_rng(1)
    true_median = 1.0  # exp(0): the median of a log-normal with μ = 0
    covered = 0
    for _ in range(400):
        draw = rng.lognormal(0.0, 0.6, size=11)
        found = median_interval(draw)
        assert found.low <= found.mean <= found.high
        covered += found.low <= true_median <= found.high
    exact = 1 - 2 * binom.cdf(1, 11, 0.5)  # [x(2), x(10)] misses when at most one draw falls on one side
    assert exact > 0.95
    assert abs(covered / 400 - exact) <= 0.02  # about 3.5 standard errors of a 400-draw binomial


def _row(name: str, method: str, fd: list[float]) -> dict:
    interval = seed_interval(fd)
    return {
        "setting": name,
        "method": method,
        "per_seed": {"fd": fd},
        "fd": {"mean": interval.mean, "low": interval.low, "high": interval.high},
    }


def test_report_words_follow_the_holm_adjusted_p_value():
    from smoothed_energy_guidance.toy.report import _table, paired_comparisons

    base = _row("vanilla", "vanilla", [100.0, 110.0, 95.0, 105.0, 102.0, 98.0])
    rows = [
        _row("real scenes (held out)", "real", [40.0, 41.0, 39.0, 42.0, 40.0, 41.0]),
        base,
        _row("much better", "seg", [60.0, 71.0, 54.0, 66.0, 61.0, 59.0]),
        _row("worse", "seg", [130.0, 141.0, 126.0, 134.0, 131.0, 127.0]),
        _row("noise", "seg", [101.0, 108.0, 97.0, 104.0, 103.0, 97.0]),
        _row("borderline", "seg", [96.0, 110.0, 92.0, 103.0, 102.0, 94.0]),  # raw p ≈ 0.034
    ]
    comparisons = paired_comparisons(rows, base)
    assert "real scenes (held out)" not in comparisons and "vanilla" not in comparisons
    raw = [comparisons[name]["p"] for name in ("much better", "worse", "noise", "borderline")]
    assert [comparisons[name]["p_holm"] for name in ("much better", "worse", "noise", "borderline")] == pytest.approx(
        holm(raw)
    )
    assert comparisons["borderline"]["p"] < 0.05 <= comparisons["borderline"]["p_holm"]  # raw would mislead
    lines = {line.split(" | ")[0].strip("| "): line for line in _table(rows, (("fd", "FD ↓", 1, 1),), base)}
    assert lines["much better"].endswith("| better |") and lines["worse"].endswith("| worse |")
    assert lines["noise"].endswith("| no difference detected |")
    assert lines["borderline"].endswith("| no difference detected |")
