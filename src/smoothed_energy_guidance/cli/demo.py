"""``seg demo``: an offline comparison grid on the bundled model, with what it shows in one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..pipelines import TINY_RANDOM
from .generate import PipelineCache
from .grid import labelled_grid
from .metadata import save_png
from .settings import GenerationSettings
from .sweep import parse_axis, run_sweep

DEMO_SETTINGS = GenerationSettings(
    prompt="a red cube on a wooden table",
    model=TINY_RANDOM,
    width=64,
    height=64,
    steps=20,
    cfg=5.0,
    seg_scale=3.0,
    seed=0,
)
DEMO_SIGMAS = "blur-sigma=1,4,16,inf"


def run_demo(out: Path, progress: bool = True, overwrite: bool = False) -> tuple[Path, str]:
    """Write the demo grid and return it with a sentence describing it."""
    cache = PipelineCache(device="cpu", progress=progress)
    axis = parse_axis(DEMO_SIGMAS)
    sweep_grid, cells = run_sweep(cache, DEMO_SETTINGS, axis, None, ("vanilla",), out, overwrite)
    images = [Image.open(path).convert("RGB") for path in cells]
    pixels = [np.asarray(image, dtype=np.float32) for image in images]
    differences = [np.abs(cell - pixels[0]).mean(axis=-1) for cell in pixels]
    brightest = max(float(d.max()) for d in differences) or 1.0
    difference_images = [Image.fromarray((255 * d / brightest).astype(np.uint8)).convert("RGB") for d in differences]
    labels = ["no SEG", *(f"SEG sigma={label}" for label in axis.labels)]
    grid = labelled_grid([images, difference_images], labels, ["image", "|change|"])
    path = save_png(grid, sweep_grid.with_name("demo.png"), DEMO_SETTINGS, {"demo": labels})
    changes = ", ".join(f"σ={label}: {d.mean():.2f}" for label, d in zip(axis.labels, differences[1:], strict=True))
    message = (
        f"Wrote {path}: the same seed without SEG (left) and with SEG (scale 3) at σ = 1, 4, 16 and ∞; the "
        f"second row maps where SEG changed the image. The bundled '{TINY_RANDOM}' model has random weights, "
        f"so its images are noise patterns, not pictures: the grid shows only how SEG moves a sample "
        f"(mean change per pixel, 0-255: {changes}). Use `seg generate --model <SDXL model>` for real images."
    )
    return path, message
