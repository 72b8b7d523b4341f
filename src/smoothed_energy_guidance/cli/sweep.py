"""Comparison grids over one or two settings, with optional vanilla / PAG baseline columns.

On a video model every cell is a clip: the grid is one MP4 (+ WebP) whose frame f is the labelled grid of
every cell's frame f, so the cells play in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..pipelines import family_of_pipeline
from .generate import PipelineCache, call_arguments
from .grid import labelled_grid
from .metadata import free_path, save_png
from .settings import GenerationSettings, parse_layers, parse_sigma, parse_temporal_sigma

AXES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "blur-sigma": ("blur_sigma", parse_sigma),
    "seg-scale": ("seg_scale", float),
    "cfg": ("cfg", float),
    "steps": ("steps", int),
    "seg-start": ("seg_start", float),
    "seg-end": ("seg_end", float),
    "layers": ("layers", parse_layers),
    "scheduler": ("scheduler", str),
    "seed": ("seed", int),
    "strength": ("strength", float),
    "temporal-sigma": ("temporal_sigma", parse_temporal_sigma),
}
BASELINES = ("vanilla", "pag")


@dataclass(frozen=True)
class Axis:
    """One swept setting: its field name, parsed values and the labels the user wrote."""

    name: str
    field: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]


def parse_axis(text: str) -> Axis:
    """``NAME=V1,V2,…`` → :class:`Axis`, with an error that shows the syntax and the names."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    labels = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not sep or not labels or name not in AXES:
        raise ValueError(
            f"Bad axis {text!r}: write NAME=V1,V2,… (e.g. blur-sigma=1,4,16,inf) with NAME one of {', '.join(AXES)}."
        )
    field, parse = AXES[name]
    try:
        values = tuple(parse(label) for label in labels)
    except ValueError as error:
        raise ValueError(f"Bad value in axis {text!r}: {error}") from None
    return Axis(name, field, values, labels)


def parse_baselines(text: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}.")
    return names


def _pag_image(pipe: Any, settings: GenerationSettings, pag_cache: dict) -> Image.Image:
    from diffusers import StableDiffusionXLPAGPipeline

    if settings.task != "text2img":
        raise ValueError("The 'pag' baseline is available for text-to-image sweeps only.")
    if family_of_pipeline(pipe) != "sdxl":
        raise ValueError("The 'pag' baseline is available for SDXL-family models only.")
    key = id(pipe)
    if key not in pag_cache:
        pag_cache[key] = StableDiffusionXLPAGPipeline.from_pipe(
            pipe, pag_applied_layers=list(settings.layers or ["mid"])
        )
    call = {k: v for k, v in call_arguments(settings, pipe).items() if not k.startswith("seg_")}
    return pag_cache[key](**call, pag_scale=settings.seg_scale or 3.0).images[0]


def sweep_cells(settings: GenerationSettings, x: Axis, y: Axis | None, baselines: tuple[str, ...]):
    """(row label, column label, settings, baseline) for every cell, row by row."""
    rows = list(zip(y.labels, y.values, strict=True)) if y else [("", None)]
    for row_label, row_value in rows:
        row = settings.replace(**{y.field: row_value}) if y else settings
        for baseline in baselines:
            yield row_label, baseline, row.replace(seg_scale=0.0) if baseline == "vanilla" else row, baseline
        for label, value in zip(x.labels, x.values, strict=True):
            yield row_label, f"{x.name}={label}", row.replace(**{x.field: value}), None


def run_sweep(
    cache: PipelineCache,
    settings: GenerationSettings,
    x: Axis,
    y: Axis | None,
    baselines: tuple[str, ...],
    out: Path,
    overwrite: bool = False,
) -> tuple[Path, list[Path]]:
    """Generate every cell with one model load, save each cell and the labelled grid (a video model: MP4s)."""
    settings = settings.replace(num_images=1)
    cells = list(sweep_cells(settings, x, y, baselines))
    folder = free_path(out / "sweep", overwrite)
    results: list[Image.Image | list[Image.Image]] = []
    paths: list[Path] = []
    pag_cache: dict = {}
    for index, (row_label, column_label, cell, baseline) in enumerate(
        tqdm(cells, desc="cells", unit="cell", disable=not cache.progress)
    ):
        result = _pag_image(cache.pipeline(cell), cell, pag_cache) if baseline == "pag" else cache.render_any(cell)
        results.append(result)
        extra = {"baseline": baseline} if baseline else {}
        name = f"{index:03d}-{(row_label + '-' if row_label else '')}{column_label}".replace("=", "_")
        paths += _save_cell(result, folder / "cells" / name, cell, extra)
    columns = len(baselines) + len(x.values)
    column_labels = [*baselines, *(f"{x.name}={label}" for label in x.labels)]
    row_labels = [f"{y.name}={label}" for label in y.labels] if y else []
    sweep = {"x": x.name, "x_values": list(x.labels), "baselines": list(baselines)}
    if y:
        sweep.update(y=y.name, y_values=list(y.labels))

    def grid_of(images: list[Image.Image]) -> Image.Image:
        rows = [images[i : i + columns] for i in range(0, len(images), columns)]
        return labelled_grid(rows, column_labels, row_labels)

    if not isinstance(results[0], list):
        return save_png(grid_of(results), folder / "grid.png", settings, {"sweep": sweep}), paths
    from .video import save_video

    frame_count = min(len(clip) for clip in results)  # every cell has the same frames unless `frames` is swept
    frames = [grid_of([clip[f] for clip in results]) for f in range(frame_count)]
    grid_path, _ = save_video(frames, folder / "grid.mp4", settings, {"sweep": sweep})
    return grid_path, paths


def _save_cell(
    result: Image.Image | list[Image.Image], stem: Path, settings: GenerationSettings, extra: dict
) -> list[Path]:
    """A cell as a PNG, or a video model's clip as MP4 + WebP; each carries its settings."""
    if isinstance(result, list):
        from .video import save_video

        return save_video(result, stem.with_suffix(".mp4"), settings, extra)
    return [save_png(result, stem.with_suffix(".png"), settings, extra)]
