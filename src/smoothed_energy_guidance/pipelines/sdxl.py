"""SEG pipelines for Stable Diffusion XL: diffusers' own pipelines plus the ``seg_*`` arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffusers import (
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from .unet import enable_seg


class SegCallMixin:
    """Adds the official SEG-SDXL call arguments to a diffusers pipeline's ``__call__``.

    Every argument the host pipeline accepts is passed through unchanged; the host's loop,
    schedulers, callbacks, LoRA, IP-Adapter and offloading stay diffusers' own.
    """

    def __call__(
        self,
        *args: Any,
        seg_scale: float = 3.0,
        seg_blur_sigma: float = float("inf"),
        seg_applied_layers: Sequence[str] | None = None,
        seg_applied_layers_index: Sequence[str] | None = None,
        seg_guidance_start: float = 0.0,
        seg_guidance_end: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        """Run the host pipeline with Smoothed Energy Guidance.

        Args:
            seg_scale: SEG guidance scale; about 3 works well, 0 is the plain pipeline.
            seg_blur_sigma: Gaussian σ over the attention grid; vary it exponentially
                (1, 4, 16, …); any value > 9999 such as ``float("inf")`` gives uniform queries.
            seg_applied_layers: layer specs, default ``["mid"]`` (all mid-block self-attentions).
            seg_applied_layers_index: official index names (``"d4"``, ``"m0"``, ``"u30"``);
                when given, they take precedence over ``seg_applied_layers``.
            seg_guidance_start, seg_guidance_end: fraction of the denoising steps
                ``[start, end)`` during which SEG runs.
        """
        layers = seg_applied_layers_index or seg_applied_layers or ("mid",)
        with enable_seg(
            self,
            scale=seg_scale,
            blur_sigma=seg_blur_sigma,
            layers=layers,
            start=seg_guidance_start,
            end=seg_guidance_end,
        ):
            return super().__call__(*args, **kwargs)


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


#: The name the official SEG repository uses.
StableDiffusionXLSEGControlNetPipeline = StableDiffusionXLControlNetSEGPipeline
