"""Pipelines: the only layer that imports diffusers. Everything here is public API."""

from .loading import (
    DEFAULT_MODEL,
    SCHEDULERS,
    TINY_RANDOM,
    ModelLoadError,
    apply_loras,
    load_base_pipeline,
    load_controlnet,
    load_pipeline,
    pipeline_for_task,
    place_pipeline,
    resolve_device,
    resolve_dtype,
    set_scheduler,
)
from .sdxl import (
    StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionXLSEGControlNetPipeline,
    StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLSEGPipeline,
)
from .unet import enable_seg

__all__ = [
    "DEFAULT_MODEL",
    "SCHEDULERS",
    "TINY_RANDOM",
    "ModelLoadError",
    "StableDiffusionXLControlNetSEGPipeline",
    "StableDiffusionXLSEGControlNetPipeline",
    "StableDiffusionXLSEGImg2ImgPipeline",
    "StableDiffusionXLSEGInpaintPipeline",
    "StableDiffusionXLSEGPipeline",
    "apply_loras",
    "enable_seg",
    "load_base_pipeline",
    "load_controlnet",
    "load_pipeline",
    "pipeline_for_task",
    "place_pipeline",
    "resolve_device",
    "resolve_dtype",
    "set_scheduler",
]
