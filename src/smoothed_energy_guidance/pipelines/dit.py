"""SEG pipelines for diffusion transformers: Stable Diffusion 3 / 3.5 and Flux.1.

Default layers: the middle transformer block (``blocks.N//2``; for Flux the middle of the double
and single stacks taken together), the DiT counterpart of a UNet's mid block, which SEG's paper
perturbs. Flux has no batched CFG: SEG adds ``s·(cond − perturbed)`` to each prediction, and
composes exactly with ``true_cfg_scale`` and a negative prompt.
"""

from __future__ import annotations

from diffusers import FluxImg2ImgPipeline, FluxPipeline, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

from .call import SegCallMixin


class StableDiffusion3SEGPipeline(SegCallMixin, StableDiffusion3Pipeline):
    """SD3 / SD3.5 text-to-image with SEG on image-token queries."""


class StableDiffusion3SEGImg2ImgPipeline(SegCallMixin, StableDiffusion3Img2ImgPipeline):
    """SD3 / SD3.5 image-to-image with SEG."""


class FluxSEGPipeline(SegCallMixin, FluxPipeline):
    """Flux.1 text-to-image with SEG (double- and single-stream blocks)."""


class FluxSEGImg2ImgPipeline(SegCallMixin, FluxImg2ImgPipeline):
    """Flux.1 image-to-image with SEG."""
