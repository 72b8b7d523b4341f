"""SEG pipelines for diffusion transformers: SD3 / SD3.5, Flux.1 (Fill, Kontext), Chroma, Qwen-Image,
PixArt-α / -Σ, HunyuanDiT and Sana.

Default layers: the middle transformer block (``blocks.N//2``; for Flux and Chroma the middle of the
double and single stacks taken together), the DiT counterpart of a UNet's mid block, which SEG's paper
perturbs. Flux, Chroma and Qwen-Image run CFG as a separate uncond call: SEG adds
``s·(cond − perturbed)`` to the cond prediction and composes exactly with that CFG.
"""

from __future__ import annotations

from diffusers import (
    ChromaImg2ImgPipeline,
    ChromaPipeline,
    CogVideoXImageToVideoPipeline,
    CogVideoXPipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    HunyuanDiTPipeline,
    HunyuanVideoPipeline,
    LTXImageToVideoPipeline,
    LTXPipeline,
    MochiPipeline,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    QwenImageEditPipeline,
    QwenImageImg2ImgPipeline,
    QwenImagePipeline,
    SanaPipeline,
    StableDiffusion3ControlNetPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    WanImageToVideoPipeline,
    WanPipeline,
)

from .call import SegCallMixin


class StableDiffusion3SEGPipeline(SegCallMixin, StableDiffusion3Pipeline):
    """SD3 / SD3.5 text-to-image with SEG on image-token queries."""


class StableDiffusion3SEGImg2ImgPipeline(SegCallMixin, StableDiffusion3Img2ImgPipeline):
    """SD3 / SD3.5 image-to-image with SEG."""


class StableDiffusion3ControlNetSEGPipeline(SegCallMixin, StableDiffusion3ControlNetPipeline):
    """SD3 / SD3.5 ControlNet with SEG; the perturbed rows receive the cond rows' residuals."""


class FluxSEGPipeline(SegCallMixin, FluxPipeline):
    """Flux.1 text-to-image with SEG (double- and single-stream blocks)."""


class FluxSEGImg2ImgPipeline(SegCallMixin, FluxImg2ImgPipeline):
    """Flux.1 image-to-image with SEG."""


class FluxFillSEGPipeline(SegCallMixin, FluxFillPipeline):
    """Flux.1 Fill (inpainting / outpainting) with SEG."""


class FluxKontextSEGPipeline(SegCallMixin, FluxKontextPipeline):
    """Flux.1 Kontext with SEG: only the generated image's queries are blurred, over its own grid; the
    reference image's and the text's tokens stay as they are."""


class ChromaSEGPipeline(SegCallMixin, ChromaPipeline):
    """Chroma text-to-image with SEG; CFG (``guidance_scale`` > 1) is a separate uncond call."""


class ChromaSEGImg2ImgPipeline(SegCallMixin, ChromaImg2ImgPipeline):
    """Chroma image-to-image with SEG."""


class QwenImageSEGPipeline(SegCallMixin, QwenImagePipeline):
    """Qwen-Image text-to-image with SEG (``true_cfg_scale`` with a negative prompt)."""


class QwenImageSEGImg2ImgPipeline(SegCallMixin, QwenImageImg2ImgPipeline):
    """Qwen-Image image-to-image with SEG."""


class QwenImageEditSEGPipeline(SegCallMixin, QwenImageEditPipeline):
    """Qwen-Image edit with SEG; the reference image's tokens stay unblurred."""


class PixArtAlphaSEGPipeline(SegCallMixin, PixArtAlphaPipeline):
    """PixArt-α with SEG."""


class PixArtSigmaSEGPipeline(SegCallMixin, PixArtSigmaPipeline):
    """PixArt-Σ with SEG."""


class HunyuanDiTSEGPipeline(SegCallMixin, HunyuanDiTPipeline):
    """HunyuanDiT with SEG."""


class SanaSEGPipeline(SegCallMixin, SanaPipeline):
    """Sana with SEG: the Gaussian blurs the queries before the linear attention's ReLU feature map."""


class WanSEGPipeline(SegCallMixin, WanPipeline):
    """Wan 2.x text-to-video with SEG over the (t, h, w) token grid (``seg_temporal_sigma`` along time).

    SEG runs on ``transformer``; Wan 2.2's low-noise ``transformer_2`` stage runs without it.
    """


class WanSEGImageToVideoPipeline(SegCallMixin, WanImageToVideoPipeline):
    """Wan 2.x image-to-video with SEG over the (t, h, w) token grid."""


class CogVideoXSEGPipeline(SegCallMixin, CogVideoXPipeline):
    """CogVideoX text-to-video with SEG over the (t, h, w) token grid; text tokens stay unblurred.

    ``use_dynamic_cfg`` is refused while SEG is on: the pipeline sets each step's CFG scale only after
    the denoiser call, so SEG could not combine with it exactly.
    """


class CogVideoXSEGImageToVideoPipeline(SegCallMixin, CogVideoXImageToVideoPipeline):
    """CogVideoX image-to-video with SEG (``use_dynamic_cfg`` refused while SEG is on)."""


class LTXSEGPipeline(SegCallMixin, LTXPipeline):
    """LTX-Video text-to-video with SEG over the (t, h, w) token grid."""


class LTXSEGImageToVideoPipeline(SegCallMixin, LTXImageToVideoPipeline):
    """LTX-Video image-to-video with SEG over the (t, h, w) token grid."""


class HunyuanVideoSEGPipeline(SegCallMixin, HunyuanVideoPipeline):
    """HunyuanVideo text-to-video with SEG over the (t, h, w) token grid (true CFG with a negative prompt)."""


class MochiSEGPipeline(SegCallMixin, MochiPipeline):
    """Mochi text-to-video with SEG over the (t, h, w) token grid."""
