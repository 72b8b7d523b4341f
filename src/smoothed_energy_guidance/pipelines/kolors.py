"""SEG pipelines for Kolors: an SDXL-architecture UNet conditioned by ChatGLM (default layers ``["mid"]``)."""

from __future__ import annotations

from diffusers import KolorsImg2ImgPipeline, KolorsPipeline

from .call import SegCallMixin


class KolorsSEGPipeline(SegCallMixin, KolorsPipeline):
    """Kolors text-to-image with SEG."""


class KolorsSEGImg2ImgPipeline(SegCallMixin, KolorsImg2ImgPipeline):
    """Kolors image-to-image with SEG."""
