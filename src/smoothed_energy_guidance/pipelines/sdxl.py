"""SEG pipelines for Stable Diffusion XL: diffusers' own pipelines plus the ``seg_*`` arguments."""

from __future__ import annotations

from diffusers import (
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from .call import SegCallMixin


class StableDiffusionXLSEGPipeline(SegCallMixin, StableDiffusionXLPipeline):
    """SDXL text-to-image with SEG; loads like ``StableDiffusionXLPipeline``."""


class StableDiffusionXLSEGImg2ImgPipeline(SegCallMixin, StableDiffusionXLImg2ImgPipeline):
    """SDXL image-to-image with SEG."""


class StableDiffusionXLSEGInpaintPipeline(SegCallMixin, StableDiffusionXLInpaintPipeline):
    """SDXL inpainting with SEG (4- and 9-channel UNets)."""


class StableDiffusionXLControlNetSEGPipeline(SegCallMixin, StableDiffusionXLControlNetPipeline):
    """SDXL ControlNet with SEG: one ControlNet, ``MultiControlNetModel`` and ``guess_mode``.

    The perturbed rows receive the cond rows' ControlNet residuals.
    """


class StableDiffusionXLControlNetSEGImg2ImgPipeline(SegCallMixin, StableDiffusionXLControlNetImg2ImgPipeline):
    """SDXL ControlNet image-to-image with SEG; the perturbed rows receive the cond rows' residuals."""


class StableDiffusionXLControlNetSEGInpaintPipeline(SegCallMixin, StableDiffusionXLControlNetInpaintPipeline):
    """SDXL ControlNet inpainting with SEG (4- and 9-channel UNets)."""


#: The name the official SEG repository uses.
StableDiffusionXLSEGControlNetPipeline = StableDiffusionXLControlNetSEGPipeline
