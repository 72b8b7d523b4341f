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


def demo_columns(bed: Testbed) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Column label → changes to the base settings (CFG off, SEG off). The SEG columns use the settings
    the quality sweep measured best for this model (``Testbed.measured``), beside the paper's default."""
    scale, sigma = bed.measured.seg
    cfg, combined_scale, combined_sigma = bed.measured.cfg_seg
    return (
        ("vanilla", {}),
        (f"CFG {cfg:g}", {"cfg": cfg}),
        (f"SEG {scale:g} sigma={_sigma(sigma)} (measured best)", {"seg_scale": scale, "blur_sigma": sigma}),
        ("SEG 3 sigma=inf (paper default)", {"seg_scale": 3.0, "blur_sigma": math.inf}),
        (
            f"CFG {cfg:g} + SEG {combined_scale:g} sigma={_sigma(combined_sigma)} (measured best)",
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
        f"no guidance, CFG, SEG at the scale and σ that gave the lowest unconditional Fréchet distance in "
        f"benchmarks/QUALITY.md (scale {scale:g}, σ = {_sigma(sigma)}), SEG at the paper's default (scale 3, "
        "σ = ∞) and CFG with SEG at its measured best. SEG needs no prompt: compare the last row, the empty "
        "prompt, where CFG can do nothing."
    )
    return path, message


def measured_prompted_defaults(model: str = TOY_MODEL) -> tuple[float, float, float]:
    """(CFG, SEG scale, σ) the quality sweep chose for prompted sampling on a bundled model (the UI's defaults)."""
    return testbed(model).measured.cfg_seg
