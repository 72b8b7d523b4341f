"""The family table: one record per model family SEG serves. Adding a family = one record + its reference test.

Order matters only where families are listed to users: images first, then video, then the families served
through Modular Diffusers' guider alone.
"""

from __future__ import annotations

from . import inputs
from .records import Cfg, Family, PerturbedRows, Stack, Task, TokenLayout

IMAGE_ONLY, IMAGE_FIRST, TEXT_FIRST = TokenLayout.IMAGE_ONLY, TokenLayout.IMAGE_FIRST, TokenLayout.TEXT_FIRST
REPLAYED_PREFIX, SEPARATE_CALL = PerturbedRows.REPLAYED_PREFIX, PerturbedRows.SEPARATE_CALL
BLOCKS = (Stack(spec="blocks", path="transformer_blocks"),)
FLUX_STACKS = (
    # image queries, then any reference-image tokens (Kontext); then [text, image, reference images]
    Stack(spec="double", path="transformer_blocks", tokens=IMAGE_FIRST),
    Stack(spec="single", path="single_transformer_blocks", tokens=TEXT_FIRST),
)
FLUX_IDS = frozenset({"img_ids", "txt_ids", "image_rotary_emb"})


def task(diffusers_class: str, seg_class: str, cli: bool = True, *, doc: str) -> Task:
    return Task(diffusers_class=diffusers_class, seg_class=seg_class, cli=cli, doc=doc)


def unet_tasks(prefix: str, seg: str, label: str) -> dict[str, Task]:
    """The SD / SDXL pipeline set: text2img, img2img, inpaint and ControlNet (the last two only as classes)."""
    residuals = "the perturbed rows receive the cond rows' ControlNet residuals"
    return {
        "text2img": task(f"{prefix}Pipeline", f"{seg}SEGPipeline", doc=f"{label} text-to-image with SEG."),
        "img2img": task(
            f"{prefix}Img2ImgPipeline", f"{seg}SEGImg2ImgPipeline", doc=f"{label} image-to-image with SEG."
        ),
        "inpaint": task(
            f"{prefix}InpaintPipeline",
            f"{seg}SEGInpaintPipeline",
            doc=f"{label} inpainting with SEG (4- and 9-channel UNets).",
        ),
        "controlnet": task(
            f"{prefix}ControlNetPipeline",
            f"{seg}ControlNetSEGPipeline",
            doc=(
                f"{label} ControlNet with SEG: one ControlNet, ``MultiControlNetModel`` and "
                f"``guess_mode``; {residuals}."
            ),
        ),
        "controlnet-img2img": task(
            f"{prefix}ControlNetImg2ImgPipeline",
            f"{seg}ControlNetSEGImg2ImgPipeline",
            False,
            doc=f"{label} ControlNet image-to-image with SEG; {residuals}.",
        ),
        "controlnet-inpaint": task(
            f"{prefix}ControlNetInpaintPipeline",
            f"{seg}ControlNetSEGInpaintPipeline",
            False,
            doc=f"{label} ControlNet inpainting with SEG (4- and 9-channel UNets); {residuals}.",
        ),
    }


SD = Family(
    name="Stable Diffusion 1.x/2.x",
    denoiser_classes=("UNet2DConditionModel",),
    architecture="unet",
    pipelines={"sd": unet_tasks("StableDiffusion", "StableDiffusion", "SD 1.x / 2.x")},
    pipeline_prefixes={"sd": ("StableDiffusion",)},
)
SDXL = Family(
    name="Stable Diffusion XL",
    denoiser_classes=("UNet2DConditionModel",),
    architecture="unet",
    pipelines={"sdxl": unet_tasks("StableDiffusionXL", "StableDiffusionXL", "SDXL")},
    pipeline_prefixes={"sdxl": ("StableDiffusionXL",)},
)
KOLORS = Family(
    name="Kolors",
    denoiser_classes=("UNet2DConditionModel",),
    architecture="unet",
    pipelines={
        "kolors": {
            "text2img": task("KolorsPipeline", "KolorsSEGPipeline", doc="Kolors text-to-image with SEG."),
            "img2img": task("KolorsImg2ImgPipeline", "KolorsSEGImg2ImgPipeline", doc="Kolors image-to-image with SEG."),
        }
    },
    pipeline_prefixes={"kolors": ("Kolors",)},
)
SD3 = Family(
    name="Stable Diffusion 3/3.5",
    denoiser_classes=("SD3Transformer",),
    stacks=BLOCKS,
    query_token_dim=2,
    read_inputs=inputs.sd3_inputs,
    pipelines={
        "sd3": {
            "text2img": task(
                "StableDiffusion3Pipeline",
                "StableDiffusion3SEGPipeline",
                doc="SD3 / SD3.5 text-to-image with SEG on image-token queries.",
            ),
            "img2img": task(
                "StableDiffusion3Img2ImgPipeline",
                "StableDiffusion3SEGImg2ImgPipeline",
                doc="SD3 / SD3.5 image-to-image with SEG.",
            ),
            "controlnet": task(
                "StableDiffusion3ControlNetPipeline",
                "StableDiffusion3ControlNetSEGPipeline",
                False,
                doc="SD3 / SD3.5 ControlNet with SEG; the perturbed rows receive the cond rows' residuals.",
            ),
        }
    },
    pipeline_prefixes={"sd3": ("StableDiffusion3",)},
)
FLUX = Family(
    name="Flux.1",
    note="with Fill and Kontext",
    denoiser_classes=("FluxTransformer",),
    stacks=FLUX_STACKS,
    read_inputs=inputs.flux_inputs,
    unbatched_inputs=FLUX_IDS,
    timestep_scale=1000.0,
    cfg=Cfg.SEPARATE_CALL,
    # measured cheaper than the in-call fork (benchmarks/FAMILIES.md: Kontext 1.23× against 1.33×)
    perturbed_rows=REPLAYED_PREFIX,
    pipelines={
        "flux": {
            "text2img": task(
                "FluxPipeline",
                "FluxSEGPipeline",
                doc="Flux.1 text-to-image with SEG (double- and single-stream blocks).",
            ),
            "img2img": task("FluxImg2ImgPipeline", "FluxSEGImg2ImgPipeline", doc="Flux.1 image-to-image with SEG."),
        },
        "flux-fill": {
            "inpaint": task(
                "FluxFillPipeline", "FluxFillSEGPipeline", doc="Flux.1 Fill (inpainting / outpainting) with SEG."
            )
        },
        # Kontext edits the --init-image (its reference image) or draws from the prompt alone
        "flux-kontext": {
            "text2img": task(
                "FluxKontextPipeline",
                "FluxKontextSEGPipeline",
                doc=(
                    "Flux.1 Kontext with SEG: only the generated image's queries are blurred, over its "
                    "own grid; the reference image's and the text's tokens stay as they are."
                ),
            ),
            "img2img": task(
                "FluxKontextPipeline",
                "FluxKontextSEGPipeline",
                doc=(
                    "Flux.1 Kontext with SEG: only the generated image's queries are blurred, over its "
                    "own grid; the reference image's and the text's tokens stay as they are."
                ),
            ),
        },
    },
    pipeline_prefixes={"flux": ("Flux",), "flux-fill": ("FluxFill",), "flux-kontext": ("FluxKontext",)},
)
CHROMA = Family(
    name="Chroma",
    denoiser_classes=("ChromaTransformer",),
    stacks=FLUX_STACKS,
    read_inputs=inputs.flux_inputs,
    unbatched_inputs=FLUX_IDS,
    timestep_scale=1000.0,
    cfg=Cfg.SEPARATE_CALL,
    cfg_argument="guidance_scale",  # CFG runs whenever guidance_scale > 1
    cfg_negative_inputs=(),
    pipelines={
        "chroma": {
            "text2img": task(
                "ChromaPipeline",
                "ChromaSEGPipeline",
                doc="Chroma text-to-image with SEG; CFG (``guidance_scale`` > 1) is a separate uncond call.",
            ),
            "img2img": task("ChromaImg2ImgPipeline", "ChromaSEGImg2ImgPipeline", doc="Chroma image-to-image with SEG."),
        }
    },
    pipeline_prefixes={"chroma": ("Chroma",)},
)
QWEN_IMAGE = Family(
    name="Qwen-Image",
    denoiser_classes=("QwenImageTransformer",),
    # the generated image's tokens, then any reference image's (edit)
    stacks=(Stack(spec="blocks", path="transformer_blocks", tokens=IMAGE_FIRST),),
    read_inputs=inputs.qwen_image_inputs,
    unbatched_inputs=frozenset({"image_rotary_emb"}),
    timestep_scale=1000.0,
    cfg=Cfg.SEPARATE_CALL,
    cfg_negative_inputs=(("negative_prompt",), ("negative_prompt_embeds",)),  # Qwen-Image's pipelines' rule
    pipelines={
        "qwen-image": {
            "text2img": task(
                "QwenImagePipeline",
                "QwenImageSEGPipeline",
                doc="Qwen-Image text-to-image with SEG (``true_cfg_scale`` with a negative prompt).",
            ),
            "img2img": task(
                "QwenImageImg2ImgPipeline", "QwenImageSEGImg2ImgPipeline", doc="Qwen-Image image-to-image with SEG."
            ),
        },
        "qwen-image-edit": {
            "img2img": task(
                "QwenImageEditPipeline",
                "QwenImageEditSEGPipeline",
                doc="Qwen-Image edit with SEG; the reference image's tokens stay unblurred.",
            )
        },
    },
    pipeline_prefixes={"qwen-image": ("QwenImage",), "qwen-image-edit": ("QwenImageEdit",)},
)
PIXART = Family(
    name="PixArt-α/Σ",
    denoiser_classes=("PixArtTransformer",),
    stacks=BLOCKS,
    attention_names=("attn1",),
    read_inputs=inputs.latent_inputs(),
    # its timestep modulation after the blocks uses pre-block tensors with the host's rows only
    perturbed_rows=REPLAYED_PREFIX,
    pipelines={
        "pixart-alpha": {"text2img": task("PixArtAlphaPipeline", "PixArtAlphaSEGPipeline", doc="PixArt-α with SEG.")},
        "pixart-sigma": {"text2img": task("PixArtSigmaPipeline", "PixArtSigmaSEGPipeline", doc="PixArt-Σ with SEG.")},
    },
    pipeline_prefixes={"pixart-alpha": ("PixArtAlpha",), "pixart-sigma": ("PixArtSigma",)},
)
HUNYUAN_DIT = Family(
    name="HunyuanDiT",
    denoiser_classes=("HunyuanDiT2DModel",),
    stacks=(Stack(spec="blocks", path="blocks"),),  # long skip connections between its blocks
    attention_names=("attn1",),
    query_token_dim=2,
    read_inputs=inputs.latent_inputs(),
    unbatched_inputs=frozenset({"image_rotary_emb"}),
    pipelines={
        "hunyuandit": {"text2img": task("HunyuanDiTPipeline", "HunyuanDiTSEGPipeline", doc="HunyuanDiT with SEG.")}
    },
    pipeline_prefixes={"hunyuandit": ("HunyuanDiT",)},
)
SANA = Family(
    name="Sana",
    denoiser_classes=("SanaTransformer",),
    stacks=BLOCKS,
    attention_names=("attn1",),  # linear attention: queries blurred before the kernel feature map
    read_inputs=inputs.latent_inputs(),
    perturbed_rows=REPLAYED_PREFIX,  # its unpatchify reads the input batch size
    pipelines={
        "sana": {
            "text2img": task(
                "SanaPipeline",
                "SanaSEGPipeline",
                doc="Sana with SEG: the Gaussian blurs the queries before the linear attention's ReLU feature map.",
            )
        }
    },
    pipeline_prefixes={"sana": ("Sana",)},
    unsupported_pipeline_prefixes=("SanaSprint",),
)
AURAFLOW = Family(
    name="AuraFlow",
    note="and models built on it, e.g. Pony V7",
    denoiser_classes=("AuraFlowTransformer",),
    stacks=(
        # MMDiT blocks: the image stream's own queries; then single blocks over [registers + text, image]
        Stack(spec="joint", path="joint_transformer_blocks"),
        Stack(spec="single", path="single_transformer_blocks", tokens=TEXT_FIRST),
    ),
    attention_names=("attn",),
    # the image tokens end the single blocks' queries (8 register tokens precede the text there)
    read_inputs=inputs.latent_inputs(),
    timestep_scale=1000.0,
    # measured cheaper than the in-call fork, side by side in one process (1.28× a CFG step against 1.33×,
    # limit 1.25×), as for Flux.1
    perturbed_rows=REPLAYED_PREFIX,
    pipelines={
        "auraflow": {
            "text2img": task(
                "AuraFlowPipeline",
                "AuraFlowSEGPipeline",
                doc=(
                    "AuraFlow (and models built on it, such as Pony V7) text-to-image with SEG on the image "
                    "tokens' queries of its joint and single blocks; the register and text tokens stay as they are."
                ),
            )
        }
    },
    pipeline_prefixes={"auraflow": ("AuraFlow",)},
)
WAN = Family(
    name="Wan",
    video=True,
    denoiser_classes=("WanTransformer3D",),
    stacks=(Stack(spec="blocks", path="blocks"),),
    attention_names=("attn1",),
    read_inputs=inputs.latent_inputs(frame_axis=2),
    perturbed_rows=REPLAYED_PREFIX,  # its output modulation and unpatchify use pre-block tensors
    cfg=Cfg.SEPARATE_CALL,
    cfg_argument="guidance_scale",
    cfg_negative_inputs=(),
    pipelines={
        "wan": {
            "text2img": task(
                "WanPipeline",
                "WanSEGPipeline",
                doc=(
                    "Wan 2.x text-to-video with SEG over the (t, h, w) token grid (``seg_temporal_sigma``"
                    " along time). SEG runs on ``transformer``; Wan 2.2's low-noise ``transformer_2`` "
                    "stage runs without it."
                ),
            )
        },
        # image-to-video: --init-image is the first frame
        "wan-i2v": {
            "img2img": task(
                "WanImageToVideoPipeline",
                "WanSEGImageToVideoPipeline",
                doc="Wan 2.x image-to-video with SEG over the (t, h, w) token grid.",
            )
        },
    },
    pipeline_prefixes={"wan": ("WanPipeline",), "wan-i2v": ("WanImageToVideo",)},
)
COGVIDEOX = Family(
    name="CogVideoX",
    video=True,
    denoiser_classes=("CogVideoXTransformer3D",),
    stacks=(Stack(spec="blocks", path="transformer_blocks", tokens=TEXT_FIRST),),
    attention_names=("attn1",),
    query_token_dim=2,
    read_inputs=inputs.latent_inputs(frame_axis=1, text_first=True),  # latents (B, F, C, H, W)
    unbatched_inputs=frozenset({"image_rotary_emb"}),
    perturbed_rows=REPLAYED_PREFIX,  # its unpatchify reshapes by the input batch size
    pipelines={
        "cogvideox": {
            "text2img": task(
                "CogVideoXPipeline",
                "CogVideoXSEGPipeline",
                doc=(
                    "CogVideoX text-to-video with SEG over the (t, h, w) token grid; text tokens stay "
                    "unblurred. ``use_dynamic_cfg`` is refused while SEG is on: the pipeline sets each "
                    "step's CFG scale only after the denoiser call, so SEG could not combine with it "
                    "exactly."
                ),
            )
        },
        "cogvideox-i2v": {
            "img2img": task(
                "CogVideoXImageToVideoPipeline",
                "CogVideoXSEGImageToVideoPipeline",
                doc="CogVideoX image-to-video with SEG (``use_dynamic_cfg`` refused while SEG is on).",
            )
        },
    },
    pipeline_prefixes={"cogvideox": ("CogVideoXPipeline",), "cogvideox-i2v": ("CogVideoXImageToVideo",)},
)
LTX_VIDEO = Family(
    name="LTX-Video",
    video=True,
    denoiser_classes=("LTXVideoTransformer3D",),
    stacks=BLOCKS,
    attention_names=("attn1",),
    read_inputs=inputs.ltx_inputs,
    unbatched_inputs=frozenset({"rope_interpolation_scale"}),
    perturbed_rows=REPLAYED_PREFIX,  # its output modulation uses the pre-block timestep embedding
    pipelines={
        "ltx-video": {
            "text2img": task(
                "LTXPipeline", "LTXSEGPipeline", doc="LTX-Video text-to-video with SEG over the (t, h, w) token grid."
            ),
            "img2img": task(
                "LTXImageToVideoPipeline",
                "LTXSEGImageToVideoPipeline",
                doc="LTX-Video image-to-video with SEG over the (t, h, w) token grid.",
            ),
        }
    },
    pipeline_prefixes={"ltx-video": ("LTXImageToVideo", "LTXPipeline")},
)
HUNYUAN_VIDEO = Family(
    name="HunyuanVideo",
    video=True,
    denoiser_classes=("HunyuanVideoTransformer3D",),
    # dual-stream blocks (video queries alone), then single-stream blocks over [video, text]
    stacks=(
        Stack(spec="double", path="transformer_blocks"),
        Stack(spec="single", path="single_transformer_blocks", tokens=IMAGE_FIRST),
    ),
    read_inputs=inputs.latent_inputs(frame_axis=2),
    perturbed_rows=REPLAYED_PREFIX,  # its unpatchify reshapes by the input batch size
    cfg=Cfg.SEPARATE_CALL,
    pipelines={
        "hunyuanvideo": {
            "text2img": task(
                "HunyuanVideoPipeline",
                "HunyuanVideoSEGPipeline",
                doc=(
                    "HunyuanVideo text-to-video with SEG over the (t, h, w) token grid (true CFG with a "
                    "negative prompt)."
                ),
            )
        }
    },
    pipeline_prefixes={"hunyuanvideo": ("HunyuanVideoPipeline",)},
)
MOCHI = Family(
    name="Mochi",
    video=True,
    denoiser_classes=("MochiTransformer3D",),
    stacks=BLOCKS,  # asymmetric joint attention: its video queries come alone from to_q / norm_q
    attention_names=("attn1",),
    read_inputs=inputs.latent_inputs(frame_axis=2),
    perturbed_rows=REPLAYED_PREFIX,  # its unpatchify reshapes by the input batch size
    pipelines={
        "mochi": {
            "text2img": task(
                "MochiPipeline", "MochiSEGPipeline", doc="Mochi text-to-video with SEG over the (t, h, w) token grid."
            )
        }
    },
    pipeline_prefixes={"mochi": ("MochiPipeline",)},
)
ANIMATEDIFF = Family(
    name="AnimateDiff",
    video=True,
    denoiser_classes=("UNetMotionModel",),  # frames folded into the UNet batch; motion modules never SEG layers
    architecture="unet",
    pipelines={
        "animatediff": {
            "text2img": task(
                "AnimateDiffPipeline", "AnimateDiffSEGPipeline", doc="AnimateDiff text-to-video with SEG."
            ),
            "video2video": task(
                "AnimateDiffVideoToVideoPipeline",
                "AnimateDiffSEGVideoToVideoPipeline",
                False,
                doc="AnimateDiff video-to-video with SEG.",
            ),
        }
    },
    pipeline_prefixes={"animatediff": ("AnimateDiffPipeline",)},
    unsupported_pipeline_prefixes=("AnimateDiffSDXL",),
    guider=False,  # diffusers has no modular AnimateDiff pipeline
)

# Served through Modular Diffusers' guider only --------------------------------------------------------
FLUX2 = Family(
    name="Flux.2",
    denoiser_classes=("Flux2Transformer",),
    stacks=FLUX_STACKS,  # norm_q on (B, N, heads, head_dim)
    read_inputs=inputs.flux_inputs,
    unbatched_inputs=FLUX_IDS,
    timestep_scale=1000.0,
    cfg=Cfg.SEPARATE_CALL,
    unsupported_pipeline_prefixes=("Flux2",),
)
Z_IMAGE = Family(
    name="Z-Image",
    denoiser_classes=("ZImageTransformer",),
    # [image, padding, caption] in the unified sequence
    stacks=(Stack(spec="blocks", path="layers", tokens=IMAGE_FIRST),),
    attention_names=("attention",),
    read_inputs=inputs.z_image_inputs,
    perturbed_rows=SEPARATE_CALL,  # per-sample input lists
)
FLUX3 = Family(
    name="Flux 3",
    denoiser_classes=("Flux3Transformer",),
    # per-mode image blocks (image tokens only), then joint blocks over [text, image, reference images]
    stacks=(
        Stack(spec="image", path="mode_blocks.image"),
        Stack(spec="single", path="single_transformer_blocks", tokens=TEXT_FIRST),
    ),
    read_inputs=inputs.flux_inputs,
    unbatched_inputs=frozenset({"img_ids", "txt_ids", "image_cond_ids"}),
    fork_stacks=("mode_blocks.image", "mode_blocks.image_cond", "single_transformer_blocks"),
)
KREA2 = Family(
    name="Krea 2",
    denoiser_classes=("Krea2Transformer",),
    stacks=(Stack(spec="blocks", path="transformer_blocks", tokens=TEXT_FIRST),),
    read_inputs=inputs.krea2_inputs,
    unbatched_inputs=frozenset({"position_ids"}),
    output_modules=("final_layer",),
)
ERNIE_IMAGE = Family(
    name="ERNIE-Image",
    denoiser_classes=("ErnieImageTransformer",),
    stacks=(Stack(spec="blocks", path="layers", tokens=IMAGE_FIRST),),  # [image, text]
    attention_names=("self_attention",),
    read_inputs=inputs.latent_inputs(),
    perturbed_rows=SEPARATE_CALL,  # its blocks run sequence-first ([tokens, batch, channels])
)
QWEN_IMAGE21 = Family(
    name="Qwen-Image 2.1",
    denoiser_classes=("QwenImage21Transformer",),
    # [text and condition images interleaved, target image]
    stacks=(Stack(spec="blocks", path="transformer_blocks", tokens=TEXT_FIRST),),
    read_inputs=inputs.qwen_image21_inputs,
    perturbed_rows=SEPARATE_CALL,  # with causal conditioning its modulation has one row more than the batch
)
COSMOS = Family(
    name="Cosmos / Anima",
    denoiser_classes=("CosmosTransformer3D",),
    stacks=BLOCKS,  # self-attention attn1 over the (t, h, w) tokens, all of them image tokens
    attention_names=("attn1",),
    query_token_dim=2,
    read_inputs=inputs.latent_inputs(frame_axis=2, image_only="Cosmos / Anima"),
)
HUNYUAN_VIDEO_15 = Family(
    name="HunyuanVideo 1.5",
    video=True,
    denoiser_classes=("HunyuanVideo15Transformer3D",),
    stacks=BLOCKS,  # norm_q sees the video queries alone, before the text queries join them
    read_inputs=inputs.latent_inputs(frame_axis=2),
    perturbed_rows=SEPARATE_CALL,  # its image embeds are per prompt
)

#: Every family SEG knows, in the order users see them listed.
FAMILIES: tuple[Family, ...] = (
    SD,
    SDXL,
    KOLORS,
    SD3,
    FLUX,
    CHROMA,
    QWEN_IMAGE,
    PIXART,
    HUNYUAN_DIT,
    SANA,
    AURAFLOW,
    WAN,
    COGVIDEOX,
    LTX_VIDEO,
    HUNYUAN_VIDEO,
    MOCHI,
    ANIMATEDIFF,
    FLUX2,
    Z_IMAGE,
    FLUX3,
    KREA2,
    ERNIE_IMAGE,
    QWEN_IMAGE21,
    COSMOS,
    HUNYUAN_VIDEO_15,
)
