"""Pipelines: the only layer that imports diffusers. Everything here is public API."""

from .dit import (
    FluxSEGImg2ImgPipeline,
    FluxSEGPipeline,
    StableDiffusion3SEGImg2ImgPipeline,
    StableDiffusion3SEGPipeline,
)
from .enable import SUPPORTED_FAMILIES, enable_seg, from_pipe
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
from .sd import (
    StableDiffusionControlNetSEGPipeline,
    StableDiffusionSEGImg2ImgPipeline,
    StableDiffusionSEGInpaintPipeline,
    StableDiffusionSEGPipeline,
)
from .sdxl import (
    StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionXLSEGControlNetPipeline,
    StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLSEGPipeline,
)

__all__ = [
    "SUPPORTED_FAMILIES",
    "FluxSEGImg2ImgPipeline",
    "FluxSEGPipeline",
    "StableDiffusion3SEGImg2ImgPipeline",
    "StableDiffusion3SEGPipeline",
    "StableDiffusionControlNetSEGPipeline",
    "StableDiffusionSEGImg2ImgPipeline",
    "StableDiffusionSEGInpaintPipeline",
    "StableDiffusionSEGPipeline",
    "from_pipe",
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
