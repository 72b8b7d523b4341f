"""The quality sweep written out: a Markdown table per testbed and one plot per testbed (metric vs scale,
one line per σ, 95 % bands over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import REAL_SCENES, sigma_label
from .statistics import holm, paired_t_test

# (key, column, digits, factor); digits None: three significant digits (KID's scale follows the features')
METRICS = (
    ("fd", "FD ↓", 1, 1),
    ("kid", "KID ↓", None, 1),
    ("precision", "precision ↑", 3, 1),
    ("recall", "recall ↑", 3, 1),
)
CONDITIONAL_METRICS = (
    *METRICS,
    ("attribute_accuracy", "attribute accuracy ↑", 3, 1),
    ("all_correct", "all right ↑", 3, 1),
)
SIGNIFICANCE = 0.05


def _cell(row: dict[str, Any], metric: str, digits: int | None, factor: float) -> str:
    interval = row.get(metric)
    if interval is None:
        return "—"  # a sweep run before this metric existed
    mean, half = interval["mean"] * factor, (interval["high"] - interval["low"]) / 2 * factor
    if digits is None:
        return f"{mean:.3g} ± {half:.2g}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def paired_comparisons(rows: list[dict[str, Any]], baseline: dict[str, Any], metric: str = "fd") -> dict[str, dict]:
    """Every setting against ``baseline`` seed by seed (same noise, same reference): the mean difference with
    its t-interval, the paired t-test's p-value and its Holm adjustment over the table (the held-out real scenes
    are the table's ceiling, not a setting, and are not tested)."""
    tested = [row for row in rows if row is not baseline and row["method"] != "real"]
    results = {}
    for row in tested:
        differences = [a - b for a, b in zip(row["per_seed"][metric], baseline["per_seed"][metric], strict=True)]
        interval, p_value = paired_t_test(differences)
        results[row["setting"]] = {"difference": interval, "p": p_value}
    for row, adjusted in zip(tested, holm([results[row["setting"]]["p"] for row in tested]), strict=True):
        results[row["setting"]]["p_holm"] = adjusted
    return results


def _verdict(comparison: dict) -> str:
    """The words follow the Holm-adjusted p-value (lower FD is better); no equivalence is ever claimed."""
    if comparison["p_holm"] >= SIGNIFICANCE:
        return "no difference detected"
    return "better" if comparison["difference"].mean < 0 else "worse"


def _table(
    rows: list[dict[str, Any]], metrics: tuple[tuple[str, str, int, float], ...], baseline: dict[str, Any]
) -> list[str]:
    shown = [metric for metric in metrics if any(metric[0] in row for row in rows)]
    comparisons = paired_comparisons(rows, baseline)
    header = " | ".join(label for _, label, _, _ in shown)
    lines = [f"| setting | {header} | ΔFD vs {baseline['setting']} | p | p (Holm) | FD verdict |"]
    lines.append("|---" * (len(shown) + 5) + "|")
    for row in rows:
        cells = " | ".join(_cell(row, key, digits, factor) for key, _, digits, factor in shown)
        comparison = comparisons.get(row["setting"])
        if comparison is None:
            tail = "— | — | — | —"
        else:
            difference = comparison["difference"]
            tail = (
                f"{difference.mean:+.1f} ± {difference.half_width:.1f} | {comparison['p']:.3f} | "
                f"{comparison['p_holm']:.3f} | {_verdict(comparison)}"
            )
        lines.append(f"| {row['setting']} | {cells} | {tail} |")
    return lines


def _named(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    return next(row for row in rows if row["method"] == method)


def _reference_text(results: dict[str, Any]) -> str:
    references = results.get("references", results["samples"])
    if references == results["samples"]:
        return f"Each seed has its own reference set of {references} real scenes."
    return (
        f"Each seed has its own reference set of {references} real scenes: FD and precision are measured "
        f"against all of it, recall against {results['samples']} of them (as many as the images). The row "
        f"'{REAL_SCENES.name}' measures {results['samples']} further real scenes per seed the same way: the "
        "scores of a perfect sampler."
    )


def sweep_markdown(results: dict[str, Any], command: str) -> str:
    """One testbed's section of benchmarks/QUALITY.md."""
    seeds = results["seeds"]
    lines = [
        f"## {results['testbed']}",
        "",
        f"Command: `{command}`. {results['samples']} images per seed and setting, seeds {seeds}, "
        f"{results['steps']} Euler steps, SEG / PAG on `mid`.",
        "",
        f"Cells: the mean over the {len(seeds)} seeds ± the 95 % Student-t half-width, so every interval is "
        f"printed beside its estimate and contains it. {_reference_text(results)} FD is biased upwards at this "
        "sample size (two sets of real scenes of this size score well above 0: see the real-scenes row), so "
        "compare settings within a column; KID, where shown, is unbiased (real against real scores 0 on "
        "average). ΔFD is the FD difference to the baseline setting seed by seed (same noise, same reference), "
        "mean ± 95 % t half-width; p is the paired t-test's, and p (Holm) is adjusted over every comparison of "
        'the table. The verdict follows the adjusted p-value at 5 %: "no difference detected" is not a claim '
        "of equivalence (no equivalence test is made). These are verdicts on these testbeds only.",
        "",
        "### Unconditional (empty prompt)",
        "",
        *_table(results["unconditional"], METRICS, _named(results["unconditional"], "vanilla")),
        "",
        "### Conditional (captions of fresh scenes)",
        "",
        *_table(results["conditional"], CONDITIONAL_METRICS, _named(results["conditional"], "CFG")),
        "",
    ]
    return "\n".join(lines)


def plot_sweep(results: dict[str, Any], path: Path) -> Path:
    """Unconditional FD, precision and recall against guidance scale: a line per SEG σ and for PAG, each
    with its 95 % band over seeds; vanilla sampling as a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["unconditional"]
    plotted = [metric for metric in METRICS if metric[0] in rows[0]]
    figure, axes = plt.subplots(1, len(plotted), figsize=(5 * len(plotted), 4), constrained_layout=True)
    vanilla = next(row for row in rows if row["method"] == "vanilla")
    real = next((row for row in rows if row["method"] == "real"), None)
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] == "SEG":
            curves.setdefault(f"SEG σ={sigma_label(row['sigma'])}", []).append(row)
        elif row["method"] == "PAG":
            curves.setdefault("PAG", []).append(row)
    for axis, (metric, label, _, factor) in zip(axes, plotted, strict=True):
        base = {key: value * factor for key, value in vanilla[metric].items()}
        axis.axhline(base["mean"], color="black", linewidth=1, label="vanilla")
        axis.axhspan(base["low"], base["high"], color="black", alpha=0.1)
        if real:
            axis.axhline(
                real[metric]["mean"] * factor, color="green", linestyle=":", linewidth=1.5, label="real scenes"
            )
        for name, curve in curves.items():
            curve = sorted(curve, key=lambda r: r["pag_scale"] if name == "PAG" else r["seg_scale"])
            scales = [r["pag_scale"] if name == "PAG" else r["seg_scale"] for r in curve]
            style = dict(linestyle="--", marker="s") if name == "PAG" else dict(marker="o")
            (line,) = axis.plot(scales, [r[metric]["mean"] * factor for r in curve], label=name, **style)
            lows, highs = [r[metric]["low"] * factor for r in curve], [r[metric]["high"] * factor for r in curve]
            axis.fill_between(scales, lows, highs, color=line.get_color(), alpha=0.15)
        axis.set_xlabel("guidance scale")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"{results['testbed']}: unconditional samples, {results['samples']} per seed × {len(results['seeds'])} seeds, "
        "95 % bands over seeds"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


QUALITY_HEADER = """# SEG quality on the bundled testbeds

Written by `seg eval` from the `quality-*.json` files beside it (one documented command per testbed,
shown in each section). Realism: Fréchet distance (FD, lower is better) and improved precision / recall
(k = 5) in the feature space of each testbed's scene network, trained on held-out scenes; adherence: the
share of caption attributes the network's heads read back from the image. Whatever the numbers say is
reported as measured; plots: `quality-<testbed>.png`.
"""


def confirmation_markdown(results: dict[str, Any], command: str) -> str:
    """A testbed's confirmation section: the picked settings on fresh seeds and the declared comparisons."""
    seeds = results["seeds"]
    unconditional = results["unconditional"]
    lines = [
        f"### {results['testbed']}: confirmation on fresh seeds",
        "",
        f"Command: `{command}`. Settings picked by the sweep above (`{results['selected_by']}`, seeds "
        f"{results['plan']['selection_seeds']}) and measured again on seeds {seeds}, none of which took part in "
        f"the pick: {results['samples']} images per seed and setting, {results['steps']} Euler steps. The "
        "comparisons below were declared before the run and are Holm-adjusted as one family; these verdicts, "
        "not the sweep's, are what the demo, the UI defaults and the README rest on. On these testbeds only.",
        "",
        "| comparison | ΔFD (mean ± 95 % t) | p | p (Holm) | verdict |",
        "|---|---|---|---|---|",
    ]
    for comparison in results["comparisons"]:
        difference = comparison["difference"]
        half = (difference["high"] - difference["low"]) / 2
        lines.append(
            f"| {comparison['setting']} vs {comparison['baseline']} | {difference['mean']:+.1f} ± {half:.1f} | "
            f"{comparison['p']:.3f} | {comparison['p_holm']:.3f} | {comparison['verdict']} |"
        )
    shown = [metric for metric in CONDITIONAL_METRICS if any(metric[0] in row for row in unconditional)]
    lines += [
        "",
        "| setting | " + " | ".join(label for _, label, _, _ in shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    for row in unconditional + results["conditional"]:
        cells = " | ".join(_cell(row, key, digits, factor) for key, _, digits, factor in shown)
        lines.append(f"| {row['setting']} | {cells} |")
    return "\n".join([*lines, ""])


def result_file(results: dict[str, Any]) -> str:
    """Where ``results`` are saved in the output folder: quality-<testbed>.json for a sweep,
    confirmation-<testbed>.json for a confirmation."""
    kind = "confirmation" if results.get("kind") == "confirmation" else "quality"
    return f"{kind}-{results['testbed']}.json"


def write_reports(results: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Save one run's results (JSON, and a plot for a sweep) and rebuild QUALITY.md from every sweep and
    confirmation JSON in ``out_dir`` (each testbed's confirmation follows its sweep)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / result_file(results)
    data.write_text(json.dumps({**results, "command": command}, indent=1, ensure_ascii=False), encoding="utf-8")
    written = [data]
    if results.get("kind") != "confirmation":
        written.append(plot_sweep(results, out_dir / f"quality-{results['testbed']}.png"))
    sections = [QUALITY_HEADER]
    for path in sorted(out_dir.glob("quality-*.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))
        sections.append(sweep_markdown(stored, stored["command"]))
        confirmation = out_dir / f"confirmation-{stored['testbed']}.json"
        if confirmation.exists():
            confirmed = json.loads(confirmation.read_text(encoding="utf-8"))
            sections.append(confirmation_markdown(confirmed, confirmed["command"]))
    table = out_dir / "QUALITY.md"
    table.write_text("\n".join(sections), encoding="utf-8")
    return [*written, table]
