"""Smoothed Energy Guidance (SEG) for Hugging Face diffusers.

>>> import smoothed_energy_guidance as seg
>>> seg.SegConfig(scale=3.0, blur_sigma=10.0).infinite_blur
False
"""

from .blur import blur_queries
from .guidance import SegConfig, apply_seg
from .hooks import SegHooks
from .pipelines import (
    StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionXLSEGControlNetPipeline,
    StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLSEGPipeline,
    enable_seg,
)

__version__ = "0.1.0"

__all__ = [
    "SegConfig",
    "SegHooks",
    "StableDiffusionXLControlNetSEGPipeline",
    "StableDiffusionXLSEGControlNetPipeline",
    "StableDiffusionXLSEGImg2ImgPipeline",
    "StableDiffusionXLSEGInpaintPipeline",
    "StableDiffusionXLSEGPipeline",
    "apply_seg",
    "blur_queries",
    "enable_seg",
]
