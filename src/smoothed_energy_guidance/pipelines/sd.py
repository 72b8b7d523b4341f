"""SEG pipelines for Stable Diffusion 1.x / 2.x (default layers ``["mid"]``, as for SDXL)."""

from __future__ import annotations

from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from .call import SegCallMixin


class StableDiffusionSEGPipeline(SegCallMixin, StableDiffusionPipeline):
    """SD 1.x / 2.x text-to-image with SEG."""


class StableDiffusionSEGImg2ImgPipeline(SegCallMixin, StableDiffusionImg2ImgPipeline):
    """SD 1.x / 2.x image-to-image with SEG."""


class StableDiffusionSEGInpaintPipeline(SegCallMixin, StableDiffusionInpaintPipeline):
    """SD 1.x / 2.x inpainting with SEG."""


class StableDiffusionControlNetSEGPipeline(SegCallMixin, StableDiffusionControlNetPipeline):
    """SD 1.x / 2.x ControlNet with SEG; the perturbed rows receive the cond rows' residuals."""


class StableDiffusionControlNetSEGImg2ImgPipeline(SegCallMixin, StableDiffusionControlNetImg2ImgPipeline):
    """SD 1.x / 2.x ControlNet image-to-image with SEG."""


class StableDiffusionControlNetSEGInpaintPipeline(SegCallMixin, StableDiffusionControlNetInpaintPipeline):
    """SD 1.x / 2.x ControlNet inpainting with SEG (4- and 9-channel UNets)."""
