"""Pipelines: the only layer that imports diffusers."""

from .loading import load_pipeline
from .sdxl import (
    StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionXLSEGControlNetPipeline,
    StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLSEGPipeline,
)
from .unet import enable_seg

__all__ = [
    "StableDiffusionXLControlNetSEGPipeline",
    "StableDiffusionXLSEGControlNetPipeline",
    "StableDiffusionXLSEGImg2ImgPipeline",
    "StableDiffusionXLSEGInpaintPipeline",
    "StableDiffusionXLSEGPipeline",
    "enable_seg",
    "load_pipeline",
]
