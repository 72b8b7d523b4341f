"""``seg demo``: an offline comparison grid on a bundled model, at the settings its measurements chose."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..pipelines import TOY_MODEL
from ..toy.testbeds import Testbed, testbed
from .generate import PipelineCache
from .grid import labelled_grid
from .metadata import free_path, save_png
from .settings import GenerationSettings


def _sigma(sigma: float) -> str:
    return "inf" if math.isinf(sigma) else f"{sigma:g}"


def demo_prompts(bed: Testbed) -> tuple[str, ...]:
    """Three captions of the testbed's domain (fixed seed) and the empty prompt."""
    rng = np.random.default_rng(0)
    return (*(bed.domain.random_scene(rng).caption for _ in range(3)), "")


def on_fresh_seeds(verdict: str, baseline: str) -> str:
    """A confirmation verdict in words: 'better than vanilla on fresh seeds', 'not better than CFG 5 …'."""
    words = {"better": "better than", "worse": "worse than", "no difference detected": "not better than"}[verdict]
    return f"{words} {baseline} on fresh seeds"


def demo_columns(bed: Testbed) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Column label → changes to the base settings (CFG off, SEG off). The SEG columns: the settings the quality
    sweep found best for this model (``Testbed.measured``) and the paper's default, each labelled with what the
    confirmation on fresh seeds said of it."""
    measured = bed.measured
    scale, sigma = measured.seg
    cfg, combined_scale, combined_sigma = measured.cfg_seg
    return (
        ("vanilla", {}),
        (f"CFG {cfg:g}", {"cfg": cfg}),
        (
            f"SEG {scale:g} sigma={_sigma(sigma)} (best found; {on_fresh_seeds(measured.seg_vs_vanilla, 'vanilla')})",
            {"seg_scale": scale, "blur_sigma": sigma},
        ),
        (
            f"SEG 3 sigma=inf (paper default; {on_fresh_seeds(measured.paper_vs_vanilla, 'vanilla')})",
            {"seg_scale": 3.0, "blur_sigma": math.inf},
        ),
        (
            f"CFG {cfg:g} + SEG {combined_scale:g} sigma={_sigma(combined_sigma)} "
            f"(best found; {on_fresh_seeds(measured.cfg_seg_vs_cfg, f'CFG {cfg:g}')})",
            {"cfg": cfg, "seg_scale": combined_scale, "blur_sigma": combined_sigma},
        ),
    )


def demo_settings(bed: Testbed) -> GenerationSettings:
    return GenerationSettings(model=bed.name, width=bed.size, height=bed.size, steps=25, cfg=1.0, seg_scale=0.0, seed=0)


def run_demo(out: Path, progress: bool = True, overwrite: bool = False, model: str = TOY_MODEL) -> tuple[Path, str]:
    """Write the demo grid of bundled model ``model`` (one row per prompt, one column per setting)."""
    bed = testbed(model)
    base = demo_settings(bed)
    columns = demo_columns(bed)
    prompts = demo_prompts(bed)
    cache = PipelineCache(device="cpu", progress=False)
    rows: list[list[Image.Image]] = []
    for prompt in prompts:
        rows.append([cache.render(base.replace(prompt=prompt, **changes)) for _, changes in columns])
    labels = [label for label, _ in columns]
    row_labels = [p.replace(", ", "\n") if p else "(empty prompt)" for p in prompts]  # the whole prompt
    grid = labelled_grid(rows, labels, row_labels)
    path = save_png(grid, free_path(out / f"demo-{bed.name}.png", overwrite), base, {"demo": labels})
    scale, sigma = bed.measured.seg
    message = (
        f"Wrote {path}: the bundled '{bed.name}' model (procedural scenes), same seed in every cell; columns are "
        f"no guidance, CFG, SEG at the scale and σ that gave the lowest unconditional Fréchet distance in the "
        f"sweep of benchmarks/QUALITY.md (scale {scale:g}, σ = {_sigma(sigma)}), SEG at the paper's default (scale "
        "3, σ = ∞) and CFG with SEG at its best found; each label says what the confirmation on fresh seeds "
        "found. SEG needs no prompt: compare the last row, the empty prompt, where CFG can do nothing."
    )
    return path, message


#: The UI's prompt where its defaults are prompted ones.
DEFAULT_PROMPT = "a red circle on the left, green ground, blue sky"


def interface_defaults(model: str = TOY_MODEL) -> tuple[str, float, float, float, str]:
    """(prompt, CFG, SEG scale, σ, why) the UI starts with on a bundled model: only a setting the confirmation on
    fresh seeds did not find worse than its baseline. CFG + SEG at its best found where it held up against CFG
    alone; else SEG alone on the empty prompt at its best found, where it held up against no guidance."""
    measured = testbed(model).measured
    cfg, scale, sigma = measured.cfg_seg
    if measured.cfg_seg_vs_cfg != "worse":
        verdict = on_fresh_seeds(measured.cfg_seg_vs_cfg, f"CFG {cfg:g}")
        why = f"CFG {cfg:g} + SEG {scale:g}, σ = {_sigma(sigma)}: {verdict}"
        return DEFAULT_PROMPT, cfg, scale, sigma, why
    seg_scale, seg_sigma = measured.seg if measured.seg_vs_vanilla != "worse" else (0.0, math.inf)
    why = (
        f"on the bundled '{model}' model, CFG {cfg:g} + SEG {scale:g} (σ = {_sigma(sigma)}) was "
        f"{on_fresh_seeds('worse', f'CFG {cfg:g}')}, so the page starts without a prompt, where SEG "
        f"{seg_scale:g} (σ = {_sigma(seg_sigma)}) was {on_fresh_seeds(measured.seg_vs_vanilla, 'no guidance')} "
        "(benchmarks/QUALITY.md)"
    )
    return "", 1.0, seg_scale, seg_sigma, why
