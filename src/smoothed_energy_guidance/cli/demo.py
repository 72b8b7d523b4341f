"""``seg demo``: an offline comparison grid on the bundled model, with what it shows in one sentence."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..pipelines import TOY_MODEL
from .generate import PipelineCache
from .grid import labelled_grid
from .metadata import free_path, save_png
from .settings import GenerationSettings

DEMO_PROMPTS = (
    "a red circle on the left, green ground, blue sky",
    "a yellow triangle on the center, sand ground, night sky",
    "a cyan square on the right, snow ground, orange sky",
    "",
)
# column label → changes to the base settings (CFG off, SEG off)
DEMO_COLUMNS = (
    ("vanilla", {}),
    ("CFG 5", {"cfg": 5.0}),
    ("SEG sigma=1", {"seg_scale": 3.0, "blur_sigma": 1.0}),
    ("SEG sigma=4", {"seg_scale": 3.0, "blur_sigma": 4.0}),
    ("SEG sigma=16", {"seg_scale": 3.0, "blur_sigma": 16.0}),
    ("SEG sigma=inf", {"seg_scale": 3.0}),
    ("CFG+SEG", {"cfg": 5.0, "seg_scale": 3.0}),
)
DEMO_SETTINGS = GenerationSettings(model=TOY_MODEL, width=32, height=32, steps=25, cfg=1.0, seg_scale=0.0, seed=0)


def run_demo(
    out: Path, progress: bool = True, overwrite: bool = False, base: GenerationSettings = DEMO_SETTINGS
) -> tuple[Path, str]:
    """Write the demo grid (one row per prompt, one column per setting) and describe it."""
    cache = PipelineCache(device="cpu", progress=False)
    rows: list[list[Image.Image]] = []
    for prompt in DEMO_PROMPTS:
        row = []
        for _, changes in DEMO_COLUMNS:
            settings = base.replace(prompt=prompt, **changes)
            row.append(cache.render(settings))
        rows.append(row)
    grid = labelled_grid(
        rows, [label for label, _ in DEMO_COLUMNS], [p.split(",")[0] if p else "(empty prompt)" for p in DEMO_PROMPTS]
    )
    path = save_png(grid, free_path(out / "demo.png", overwrite), base, {"demo": [c for c, _ in DEMO_COLUMNS]})
    message = (
        f"Wrote {path}: the bundled '{base.model}' model (procedural scenes), same seed in every cell; columns "
        "are no guidance, CFG, SEG (scale 3) at blur σ = 1, 4, 16, ∞, and CFG with SEG. SEG needs no prompt: "
        "compare the last row, the empty prompt, where CFG can do nothing."
    )
    return path, message
