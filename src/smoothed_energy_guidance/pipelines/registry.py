"""Which SEG pipeline class serves which diffusers pipeline class."""

from __future__ import annotations

from diffusers import (
    FluxImg2ImgPipeline,
    FluxPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from . import dit, sd, sdxl

SEG_CLASSES: dict[type, type] = {
    StableDiffusionXLPipeline: sdxl.StableDiffusionXLSEGPipeline,
    StableDiffusionXLImg2ImgPipeline: sdxl.StableDiffusionXLSEGImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline: sdxl.StableDiffusionXLSEGInpaintPipeline,
    StableDiffusionXLControlNetPipeline: sdxl.StableDiffusionXLControlNetSEGPipeline,
    StableDiffusionPipeline: sd.StableDiffusionSEGPipeline,
    StableDiffusionImg2ImgPipeline: sd.StableDiffusionSEGImg2ImgPipeline,
    StableDiffusionInpaintPipeline: sd.StableDiffusionSEGInpaintPipeline,
    StableDiffusionControlNetPipeline: sd.StableDiffusionControlNetSEGPipeline,
    StableDiffusion3Pipeline: dit.StableDiffusion3SEGPipeline,
    StableDiffusion3Img2ImgPipeline: dit.StableDiffusion3SEGImg2ImgPipeline,
    FluxPipeline: dit.FluxSEGPipeline,
    FluxImg2ImgPipeline: dit.FluxSEGImg2ImgPipeline,
}
