"""Generating images for a :class:`GenerationSettings` record, with one model load per model."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..pipelines import (
    apply_loras,
    load_base_pipeline,
    pipeline_for_task,
    place_pipeline,
    resolve_device,
    resolve_dtype,
    set_scheduler,
)
from .settings import GenerationSettings


def open_image(path: str, mode: str = "RGB") -> Image.Image:
    """An input picture, or a ValueError that names the file and the problem."""
    try:
        with Image.open(Path(path).expanduser()) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise ValueError(f"Cannot read image {path}: no such file.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read image {path}: not an image PIL can open ({error}).") from None


@dataclass
class PipelineCache:
    """Loads each model once per process and derives task pipelines from it with ``from_pipe``."""

    device: str = "auto"
    offload: str = "none"
    config: str | None = None
    allow_pickle: bool = False
    progress: bool = True
    _bases: dict[tuple, Any] = field(default_factory=dict)
    _tasks: dict[tuple, Any] = field(default_factory=dict)

    def pipeline(self, settings: GenerationSettings) -> Any:
        device = resolve_device(self.device)
        base_key = (settings.model, settings.dtype, settings.loras)
        if base_key not in self._bases:
            self._bases.clear()  # one model in memory at a time
            self._tasks.clear()
            base = load_base_pipeline(
                settings.model, resolve_dtype(settings.dtype, device), self.config, self.allow_pickle
            )
            apply_loras(base, settings.loras, self.allow_pickle)
            self._bases[base_key] = place_pipeline(base, device, self.offload)
        task_key = (base_key, settings.task, settings.controlnet)
        if task_key not in self._tasks:
            self._tasks[task_key] = pipeline_for_task(
                self._bases[base_key], settings.task, settings.controlnet, self.allow_pickle
            )
        pipe = self._tasks[task_key]
        set_scheduler(pipe, settings.scheduler)
        pipe.set_progress_bar_config(disable=not self.progress, leave=False, desc="steps")
        return pipe

    def render_any(self, settings: GenerationSettings) -> Image.Image | list[Image.Image]:
        """One image for ``settings`` (its seed, one image per call); a video model's frames as a list."""
        pipe = self.pipeline(settings)
        output = pipe(**call_arguments(settings, pipe))
        frames = getattr(output, "frames", None)
        return list(frames[0]) if frames is not None else output.images[0]

    def render(self, settings: GenerationSettings) -> Image.Image:
        """One image for ``settings``; video models are refused (only ``seg generate`` writes videos)."""
        result = self.render_any(settings)
        if isinstance(result, list):
            raise ValueError(
                f"{settings.model} is a video model: `seg generate` and `seg sweep` write its videos (MP4 + WebP); "
                "batch, demo and the UI handle image models only for now."
            )
        return result


def default_size(pipe: Any) -> tuple[int, int]:
    """The model's native size: UNet sample size, or the transformer pipeline's default, × VAE factor."""
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    sample = getattr(pipe, "default_sample_size", None) or denoiser.config.get("sample_size")
    if sample is None:  # video pipelines state their size as call defaults (Wan: 832 × 480)
        defaults = inspect.signature(pipe.__call__).parameters
        return defaults["width"].default, defaults["height"].default
    side = sample * pipe.vae_scale_factor
    return side, side


def output_size(settings: GenerationSettings, pipe: Any) -> tuple[int, int]:
    """(width, height): given, or taken from the init / control image, or the model's default."""
    reference = settings.init_image or settings.control_image
    given = (settings.width, settings.height)
    if reference:
        size = open_image(reference).size
        if settings.width and settings.height and given != size:
            which = "init image" if settings.init_image else "control image"
            raise ValueError(
                f"The {which} {reference} is {size[0]}x{size[1]} but the output is {given[0]}x{given[1]}; "
                f"resize the image or pass --width {size[0]} --height {size[1]}."
            )
        return size
    width, height = default_size(pipe)
    return settings.width or width, settings.height or height


def call_arguments(settings: GenerationSettings, pipe: Any) -> dict[str, Any]:
    """Keyword arguments of the SEG pipeline call for one image, seeded by ``settings.seed``."""
    width, height = output_size(settings, pipe)
    device = pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
    generator_device = "cpu" if device.type == "mps" else device
    call: dict[str, Any] = {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt or None,
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.cfg,
        "generator": torch.Generator(generator_device).manual_seed(settings.seed),
        "seg_scale": settings.seg_scale,
        "seg_blur_sigma": settings.blur_sigma,
        "seg_applied_layers": list(settings.layers) or None,
        "seg_guidance_start": settings.seg_start,
        "seg_guidance_end": settings.seg_end,
    }
    if settings.task in ("text2img", "controlnet", "inpaint"):
        call.update(width=width, height=height)
    accepts = inspect.signature(pipe.__call__).parameters
    if "num_frames" in accepts:  # a video model: its frames as PIL images
        call.update(seg_temporal_sigma=settings.temporal_sigma, output_type="pil")
        if settings.frames is not None:
            call["num_frames"] = settings.frames
    if "max_area" in accepts:  # Kontext rescales its output to this area (one megapixel unless told)
        call["max_area"] = width * height
    if "true_cfg_scale" in accepts and settings.negative_prompt and settings.cfg > 1:
        call["true_cfg_scale"] = settings.cfg  # Flux's / Qwen-Image's CFG is a second, negative-prompt pass
    if settings.init_image:
        call["image"] = open_image(settings.init_image)
        if "strength" in accepts:  # editing pipelines (Kontext, Qwen-Image edit) take the image as reference
            call["strength"] = settings.strength
    if settings.mask:
        call["mask_image"] = open_image(settings.mask, "L")
    if settings.control_image:
        call.update(image=open_image(settings.control_image), controlnet_conditioning_scale=settings.controlnet_scale)
    return call


def generate(
    cache: PipelineCache, settings: GenerationSettings
) -> Iterator[tuple[Image.Image | list[Image.Image], GenerationSettings]]:
    """Yield each image (a video model: its frames) with the settings that reproduce it alone (its own seed)."""
    for index in range(settings.num_images):
        single = settings.replace(seed=settings.seed + index, num_images=1)
        yield cache.render_any(single), single
