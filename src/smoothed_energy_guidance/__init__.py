"""Smoothed Energy Guidance (SEG) for Hugging Face diffusers.

Names load on first use, so ``import smoothed_energy_guidance as seg`` stays light and the
core (blur, layers, guidance) never pulls in diffusers.

>>> import smoothed_energy_guidance as seg
>>> seg.SegConfig(scale=3.0, blur_sigma=10.0).infinite_blur
False
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SegConfig": "guidance",
    "apply_seg": "guidance",
    "blur_queries": "blur",
    "SegHooks": "hooks",
    "enable_seg": "pipelines",
    "from_pipe": "pipelines",
    "SmoothedEnergyGuidance": "pipelines",
    "StableDiffusionSEGPipeline": "pipelines",
    "MochiSEGPipeline": "pipelines",
    "AnimateDiffSEGPipeline": "pipelines",
    "AnimateDiffSEGVideoToVideoPipeline": "pipelines",
    "HunyuanVideoSEGPipeline": "pipelines",
    "LTXSEGPipeline": "pipelines",
    "LTXSEGImageToVideoPipeline": "pipelines",
    "CogVideoXSEGPipeline": "pipelines",
    "CogVideoXSEGImageToVideoPipeline": "pipelines",
    "WanSEGPipeline": "pipelines",
    "WanSEGImageToVideoPipeline": "pipelines",
    "StableDiffusion3ControlNetSEGPipeline": "pipelines",
    "FluxFillSEGPipeline": "pipelines",
    "FluxKontextSEGPipeline": "pipelines",
    "ChromaSEGPipeline": "pipelines",
    "ChromaSEGImg2ImgPipeline": "pipelines",
    "QwenImageSEGPipeline": "pipelines",
    "QwenImageSEGImg2ImgPipeline": "pipelines",
    "QwenImageEditSEGPipeline": "pipelines",
    "PixArtAlphaSEGPipeline": "pipelines",
    "PixArtSigmaSEGPipeline": "pipelines",
    "HunyuanDiTSEGPipeline": "pipelines",
    "SanaSEGPipeline": "pipelines",
    "StableDiffusionControlNetSEGImg2ImgPipeline": "pipelines",
    "StableDiffusionControlNetSEGInpaintPipeline": "pipelines",
    "StableDiffusionXLControlNetSEGImg2ImgPipeline": "pipelines",
    "StableDiffusionXLControlNetSEGInpaintPipeline": "pipelines",
    "KolorsSEGPipeline": "pipelines",
    "KolorsSEGImg2ImgPipeline": "pipelines",
    "StableDiffusionSEGImg2ImgPipeline": "pipelines",
    "StableDiffusionSEGInpaintPipeline": "pipelines",
    "StableDiffusionControlNetSEGPipeline": "pipelines",
    "StableDiffusion3SEGPipeline": "pipelines",
    "StableDiffusion3SEGImg2ImgPipeline": "pipelines",
    "FluxSEGPipeline": "pipelines",
    "FluxSEGImg2ImgPipeline": "pipelines",
    "load_pipeline": "pipelines",
    "StableDiffusionXLSEGPipeline": "pipelines",
    "StableDiffusionXLSEGImg2ImgPipeline": "pipelines",
    "StableDiffusionXLSEGInpaintPipeline": "pipelines",
    "StableDiffusionXLControlNetSEGPipeline": "pipelines",
    "StableDiffusionXLSEGControlNetPipeline": "pipelines",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smoothed_energy_guidance' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
