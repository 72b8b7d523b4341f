"""Selection, then confirmation: the sweep picks settings on its seeds; a run on fresh seeds tests a few
comparisons declared before it starts, and only those verdicts may carry a default or a claim.

Picking the lowest mean FD out of many settings on the same three seeds that then report it favours the
setting that was lucky on those seeds (the winner's curse). The confirmation run measures only the picked
settings and their baselines, on at least :data:`MIN_SEEDS` seeds disjoint from the sweep's, and Holm-adjusts
its pre-declared comparisons as one family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .evaluate import Setting, evaluate, seg_setting
from .statistics import holm, paired_t_test

#: Fewest fresh seeds a confirmation accepts.
MIN_SEEDS = 6
#: The official SEG default: scale 3, σ = ∞.
PAPER_DEFAULT = (3.0, math.inf)
SIGNIFICANCE = 0.05


def _mean_fd(row: dict[str, Any]) -> float:
    values = row["per_seed"]["fd"]
    return sum(values) / len(values)


@dataclass(frozen=True)
class ConfirmationPlan:
    """The settings a confirmation measures and the comparisons it declares before measuring.

    ``seg``: (scale, σ) of the unconditional SEG setting with the lowest mean FD on the sweep's seeds;
    ``cfg_seg``: (CFG, SEG scale, σ) of the CFG + SEG setting with the lowest mean conditional FD there.
    """

    seg: tuple[float, float]
    cfg_seg: tuple[float, float, float]
    selection_seeds: tuple[int, ...]

    @classmethod
    def from_sweep(cls, sweep: dict[str, Any]) -> ConfirmationPlan:
        """Pick the settings from a sweep's results (``seg eval`` JSON)."""
        seg_rows = [row for row in sweep["unconditional"] if row["method"] == "SEG"]
        combined = [row for row in sweep["conditional"] if row["method"] == "CFG + SEG"]
        if not seg_rows or not combined:
            raise ValueError("The sweep has no SEG or no CFG + SEG setting to confirm.")
        best = min(seg_rows, key=_mean_fd)
        best_combined = min(combined, key=_mean_fd)
        return cls(
            seg=(best["seg_scale"], best["sigma"]),
            cfg_seg=(best_combined["cfg"], best_combined["seg_scale"], best_combined["sigma"]),
            selection_seeds=tuple(sweep["seeds"]),
        )

    @property
    def picked(self) -> Setting:
        return seg_setting(*self.seg)

    @property
    def picked_at_infinity(self) -> Setting:
        return seg_setting(self.seg[0], math.inf)

    @property
    def paper(self) -> Setting:
        return seg_setting(*PAPER_DEFAULT)

    @property
    def cfg(self) -> Setting:
        return Setting(f"CFG {self.cfg_seg[0]:g}", cfg=self.cfg_seg[0])

    @property
    def picked_with_cfg(self) -> Setting:
        cfg, scale, sigma = self.cfg_seg
        return seg_setting(scale, sigma, cfg)

    def unconditional(self) -> list[Setting]:
        settings = [Setting("vanilla"), self.picked, self.picked_at_infinity, self.paper]
        return list({setting.name: setting for setting in settings}.values())  # σ = ∞ picked: fewer rows

    def conditional(self) -> list[Setting]:
        return [self.cfg, self.picked_with_cfg]

    def comparisons(self) -> list[tuple[str, str, str]]:
        """(table, setting, baseline): SEG picked vs vanilla, σ = ∞ vs the picked σ at the picked scale, the
        paper's default vs vanilla, CFG + SEG picked vs CFG (pairs that coincide are declared once)."""
        declared = [
            ("unconditional", self.picked.name, "vanilla"),
            ("unconditional", self.picked_at_infinity.name, self.picked.name),
            ("unconditional", self.paper.name, "vanilla"),
            ("conditional", self.picked_with_cfg.name, self.cfg.name),
        ]
        unique = []
        for table, setting, baseline in declared:
            if setting != baseline and (table, setting, baseline) not in unique:
                unique.append((table, setting, baseline))
        return unique


def verdict(comparison: dict[str, Any]) -> str:
    """Words that follow the Holm-adjusted p-value (lower FD is better); no equivalence is claimed."""
    if comparison["p_holm"] >= SIGNIFICANCE:
        return "no difference detected"
    return "better" if comparison["difference"]["mean"] < 0 else "worse"


def compare_declared(results: dict[str, Any], plan: ConfirmationPlan, metric: str = "fd") -> list[dict[str, Any]]:
    """The declared comparisons seed by seed (paired t-tests), Holm-adjusted as one family."""
    tested = []
    for table, setting, baseline in plan.comparisons():
        rows = {row["setting"]: row for row in results[table]}
        pairs = zip(rows[setting]["per_seed"][metric], rows[baseline]["per_seed"][metric], strict=True)
        interval, p_value = paired_t_test([a - b for a, b in pairs])
        difference = {"mean": interval.mean, "low": interval.low, "high": interval.high}
        tested.append(
            {"table": table, "setting": setting, "baseline": baseline, "difference": difference, "p": p_value}
        )
    for comparison, adjusted in zip(tested, holm([c["p"] for c in tested]), strict=True):
        comparison["p_holm"] = adjusted
        comparison["verdict"] = verdict(comparison)
    return tested


def confirm(
    model_dir: Path,
    features_file: Path,
    sweep: dict[str, Any],
    seeds: tuple[int, ...] | range,
    **options: Any,
) -> dict[str, Any]:
    """Measure the settings ``sweep`` picked on ``seeds`` (at least :data:`MIN_SEEDS`, none of them a sweep seed)
    with the sweep's sample size, steps and references unless ``options`` say otherwise, and test the declared
    comparisons."""
    seeds = tuple(seeds)
    if len(seeds) < MIN_SEEDS:
        raise ValueError(f"A confirmation needs at least {MIN_SEEDS} fresh seeds; got {len(seeds)}.")
    reused = sorted(set(seeds) & set(sweep["seeds"]))
    if reused:
        raise ValueError(
            f"Seeds {reused} picked the settings in the sweep; confirm on seeds disjoint from {sweep['seeds']}."
        )
    plan = ConfirmationPlan.from_sweep(sweep)
    for key in ("samples", "steps", "references"):
        options.setdefault(key, sweep[key])
    results = evaluate(model_dir, features_file, seeds=seeds, plan=plan, **options)
    results["kind"] = "confirmation"
    results["selected_by"] = sweep["command"]
    results["comparisons"] = compare_declared(results, plan)
    return results
