"""The quality sweep written out: a Markdown table per testbed and one plot per testbed (metric vs scale,
one line per σ, 95 % bands over seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import REAL_SCENES, sigma_label
from .statistics import seed_interval

METRICS = (("fd", "FD ↓", 1), ("precision", "precision ↑", 3), ("recall", "recall ↑", 3))
CONDITIONAL_METRICS = (*METRICS, ("attribute_accuracy", "attribute accuracy ↑", 3), ("all_correct", "all right ↑", 3))


def _cell(row: dict[str, Any], metric: str, digits: int) -> str:
    interval = row[metric]
    text = f"{interval['mean']:.{digits}f} ± {(interval['high'] - interval['low']) / 2:.{digits}f}"
    boot = row.get(f"{metric}_bootstrap")
    if boot:
        text += f" [{boot['low']:.{digits}f}, {boot['high']:.{digits}f}]"
    return text


def paired_difference(row: dict[str, Any], baseline: dict[str, Any], metric: str = "fd") -> str:
    """``row − baseline`` seed by seed (same noise, same real reference per seed), mean ± 95 % t half-width."""
    if row is baseline:
        return "—"
    differences = [a - b for a, b in zip(row["per_seed"][metric], baseline["per_seed"][metric], strict=True)]
    interval = seed_interval(differences)
    return f"{interval.mean:+.1f} ± {interval.half_width:.1f}"


def _table(
    rows: list[dict[str, Any]], metrics: tuple[tuple[str, str, int], ...], baseline: dict[str, Any]
) -> list[str]:
    lines = ["| setting | " + " | ".join(label for _, label, _ in metrics) + f" | ΔFD vs {baseline['setting']} |"]
    lines.append("|---" * (len(metrics) + 2) + "|")
    for row in rows:
        cells = " | ".join(_cell(row, m, d) for m, _, d in metrics)
        lines.append(f"| {row['setting']} | {cells} | {paired_difference(row, baseline)} |")
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
        f"Cells: mean over the {len(seeds)} seeds ± the 95 % Student-t half-width; in brackets the 95 % "
        f"percentile bootstrap over the {results['samples'] * len(seeds)} pooled images "
        f"({results['resamples']} resamples). {_reference_text(results)} FD is biased upwards at small sample "
        "sizes and the pooled bootstrap also pools the seeds' references, whose denser k-NN balls make "
        "precision stricter: bracketed FD and precision sit below the per-seed means, so compare settings "
        "within a column. "
        "The last column is the FD difference to the baseline setting seed by seed (same noise, same "
        "reference), mean ± 95 % t half-width: it removes what the settings of one seed share. A difference "
        "whose interval excludes 0 is significant at 5 %.",
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
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4), constrained_layout=True)
    vanilla = next(row for row in rows if row["method"] == "vanilla")
    real = next((row for row in rows if row["method"] == "real"), None)
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] == "SEG":
            curves.setdefault(f"SEG σ={sigma_label(row['sigma'])}", []).append(row)
        elif row["method"] == "PAG":
            curves.setdefault("PAG", []).append(row)
    for axis, (metric, label, _) in zip(axes, METRICS, strict=True):
        base = vanilla[metric]
        axis.axhline(base["mean"], color="black", linewidth=1, label="vanilla")
        axis.axhspan(base["low"], base["high"], color="black", alpha=0.1)
        if real:
            axis.axhline(real[metric]["mean"], color="green", linestyle=":", linewidth=1.5, label="real scenes")
        for name, curve in curves.items():
            curve = sorted(curve, key=lambda r: r["pag_scale"] if name == "PAG" else r["seg_scale"])
            scales = [r["pag_scale"] if name == "PAG" else r["seg_scale"] for r in curve]
            style = dict(linestyle="--", marker="s") if name == "PAG" else dict(marker="o")
            (line,) = axis.plot(scales, [r[metric]["mean"] for r in curve], label=name, **style)
            lows, highs = [r[metric]["low"] for r in curve], [r[metric]["high"] for r in curve]
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


def write_reports(results: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """Save one testbed's results (JSON + plot) and rebuild QUALITY.md from every testbed's JSON in ``out_dir``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["testbed"]
    data = out_dir / f"quality-{name}.json"
    data.write_text(json.dumps({**results, "command": command}, indent=1, ensure_ascii=False), encoding="utf-8")
    plot = plot_sweep(results, out_dir / f"quality-{name}.png")
    sections = [QUALITY_HEADER]
    for path in sorted(out_dir.glob("quality-*.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))
        sections.append(sweep_markdown(stored, stored["command"]))
    table = out_dir / "QUALITY.md"
    table.write_text("\n".join(sections), encoding="utf-8")
    return [data, plot, table]
