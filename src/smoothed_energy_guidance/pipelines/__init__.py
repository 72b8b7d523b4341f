"""Pipelines: the only layer that imports diffusers. Everything here is public API."""

from .classes import SEG_CLASSES_BY_NAME, StableDiffusionXLSEGControlNetPipeline
from .enable import SUPPORTED_FAMILIES, enable_seg
from .guider import SmoothedEnergyGuidance, guider_families
from .loading import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    FAMILY_TASKS,
    SCHEDULERS,
    TINY_MODELS,
    TINY_RANDOM,
    TOY_MODEL,
    TOY_MODEL_DIR,
    ModelLoadError,
    apply_loras,
    detect_family,
    family_of_pipeline,
    load_base_pipeline,
    load_controlnet,
    load_pipeline,
    pipeline_for_task,
    place_pipeline,
    resolve_device,
    resolve_dtype,
    set_scheduler,
)
from .registry import from_pipe

globals().update(SEG_CLASSES_BY_NAME)

__all__ = [
    *SEG_CLASSES_BY_NAME,
    "StableDiffusionXLSEGControlNetPipeline",
    "SUPPORTED_FAMILIES",
    "SmoothedEnergyGuidance",
    "from_pipe",
    "guider_families",
    "DEFAULT_MODEL",
    "FAMILY_TASKS",
    "TINY_MODELS",
    "detect_family",
    "family_of_pipeline",
    "SCHEDULERS",
    "TINY_RANDOM",
    "TOY_MODEL",
    "TOY_MODEL_DIR",
    "BUNDLED_MODELS",
    "ModelLoadError",
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
