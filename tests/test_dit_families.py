"""Qwen-Image (text2img, img2img, edit), PixArt-α / -Σ, HunyuanDiT, Sana and SD3 ControlNet pipelines
against the independent transformer reference (``reference_dit``), from precomputed text embeddings
(the text encoders are not what SEG touches).

Sana's self-attention is linear: ``relu(q)·(relu(k)ᵀv)``. SEG blurs its queries before the ReLU feature
map, as it blurs softmax attention's queries before the similarity kernel; the reference replaces the
output of ``to_q`` (or of its ``norm_q``) by the dense blur, upstream of the ReLU.
"""

from __future__ import annotations

import inspect
import math

import diffusers
import pytest
import torch
from PIL import Image
from reference_dit import reference_seg_transformer
from test_guider_families import qwen_image_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import _tiny_vae, sharpen_transformer, tiny_sd3_components

GRID = (8, 12)  # the token grid of every case below: non-square on purpose


def embeddings(length: int, width: int, masks: str | None = None, suffix: str = "") -> dict:
    g = torch.Generator().manual_seed(1 + len(suffix))
    embeds = {
        f"prompt_embeds{suffix}": torch.randn(1, length, width, generator=g),
        f"negative_prompt_embeds{suffix}": torch.randn(1, length, width, generator=g),
    }
    if masks is not None:
        embeds[f"{masks}{suffix}"] = torch.ones(1, length, dtype=torch.long)
        embeds[f"negative_{masks}{suffix}"] = torch.ones(1, length, dtype=torch.long)
    return embeds


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.effect_noise(size, 60 + seed).convert("RGB")


def sharp(model):
    sharpen_transformer(model, 4.0)
    return model.eval()


def check(
    ours,
    host,
    names,
    call,
    sigma,
    cfg,
    token_dim,
    true_cfg_scale=None,
    guidance=4.0,
    grid=GRID,
    text_tokens=None,
    seg_layers=None,
):
    def fresh():
        return dict(call, generator=torch.Generator().manual_seed(0), output_type="latent")

    chosen = {} if seg_layers is None else {"seg_applied_layers": seg_layers}
    result = ours(**fresh(), seg_scale=3.0, seg_blur_sigma=sigma, **chosen).images
    with reference_seg_transformer(
        host.transformer,
        names,
        grid,
        sigma,
        3.0,
        cfg,
        guidance,
        token_dim=token_dim,
        true_cfg_scale=true_cfg_scale,
        text_tokens=text_tokens,
    ):
        reference = host(**fresh()).images
    plain = host(**fresh()).images
    assert (result - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
    assert torch.equal(ours(**fresh(), seg_scale=0.0).images, plain)
    assert no_hooks_left(ours.transformer)


# Qwen-Image ------------------------------------------------------------------------------------------
def qwen_parts():
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        transformer=qwen_image_transformer(),
    )


QWEN_CALL = dict(embeddings(5, 16, "prompt_embeds_mask"), height=32, width=48, num_inference_steps=3)
QWEN_DEFAULT = ["transformer_blocks.1.attn"]  # the middle of three blocks


@pytest.mark.parametrize("cfg", [True, False], ids=["true-cfg", "no-cfg"])
@pytest.mark.parametrize("sigma", [1.0, math.inf])
def test_qwen_image_matches_the_reference(cfg, sigma):
    parts = qwen_parts()
    ours, host = make_pipe(seg.QwenImageSEGPipeline, parts), make_pipe(diffusers.QwenImagePipeline, parts)
    call = dict(QWEN_CALL, true_cfg_scale=4.0 if cfg else 1.0)
    if not cfg:
        call = {k: v for k, v in call.items() if not k.startswith("negative")}
    check(ours, host, QWEN_DEFAULT, call, sigma, False, 1, true_cfg_scale=4.0 if cfg else None)


@pytest.mark.parametrize("task", ["img2img", "edit"])
def test_qwen_image_img2img_and_edit_match_the_reference(task, monkeypatch):
    """Edit appends the reference image's tokens after the generated image's; they stay unblurred."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit

    # Edit resizes the reference image to one megapixel; a CPU test keeps it at 32 × 48 pixels.
    resize_to = edit.calculate_dimensions
    monkeypatch.setattr(edit, "calculate_dimensions", lambda area, ratio: resize_to(32 * 48, ratio))
    parts = qwen_parts()
    if task == "img2img":
        ours, host = (
            make_pipe(seg.QwenImageSEGImg2ImgPipeline, parts),
            make_pipe(diffusers.QwenImageImg2ImgPipeline, parts),
        )
        call = dict(QWEN_CALL, image=picture(0, (48, 32)), strength=0.8, true_cfg_scale=4.0)
    else:
        parts["processor"] = None
        ours, host = make_pipe(seg.QwenImageEditSEGPipeline, parts), make_pipe(diffusers.QwenImageEditPipeline, parts)
        call = dict(QWEN_CALL, image=picture(1, (48, 32)), true_cfg_scale=4.0)
    check(ours, host, QWEN_DEFAULT, call, 2.0, False, 1, true_cfg_scale=4.0)


# PixArt-α / -Σ ----------------------------------------------------------------------------------------
def pixart_parts():
    from diffusers import DDIMScheduler, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned variance, dropped by the pipeline
        num_layers=3,
        cross_attention_dim=16,
        sample_size=16,
        patch_size=2,
        caption_channels=32,
        norm_num_groups=1,
    )
    return dict(
        tokenizer=None,
        text_encoder=None,
        vae=_tiny_vae(),
        transformer=sharp(transformer),
        scheduler=DDIMScheduler(),
    )


@pytest.mark.parametrize("version", ["alpha", "sigma"])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_pixart_matches_the_reference(version, cfg):
    host_cls, seg_cls = {
        "alpha": (diffusers.PixArtAlphaPipeline, seg.PixArtAlphaSEGPipeline),
        "sigma": (diffusers.PixArtSigmaPipeline, seg.PixArtSigmaSEGPipeline),
    }[version]
    parts = pixart_parts()
    ours, host = make_pipe(seg_cls, parts), make_pipe(host_cls, parts)
    call = dict(
        embeddings(6, 32, "prompt_attention_mask"),
        negative_prompt=None,
        height=32,
        width=48,
        num_inference_steps=3,
        guidance_scale=4.0 if cfg else 1.0,
        use_resolution_binning=False,
    )
    check(ours, host, ["transformer_blocks.1.attn1"], call, 1.0, cfg, 1)


@pytest.mark.parametrize("share_prefix", [True, False], ids=["replayed-prefix", "rows-at-input"])
def test_pixart_perturbed_call_skips_the_blocks_before_the_first_seg_block(share_prefix):
    """PixArt's perturbed prediction: a call of its own whose block 0 replays the cond rows' output
    (share_prefix=False appends the rows at the input instead, a whole extra pass); both give the same SEG."""
    parts = pixart_parts()
    host = make_pipe(diffusers.PixArtSigmaPipeline, parts)
    blocks = parts["transformer"].transformer_blocks
    inside_block_0 = blocks[0].attn1.to_q
    seen = {0: [], 1: []}
    handles = [
        inside_block_0.register_forward_hook(lambda m, a, out: seen[0].append(out.shape[0])),
        blocks[1].attn1.to_q.register_forward_hook(lambda m, a, out: seen[1].append(out.shape[0])),
    ]
    call = dict(
        embeddings(6, 32, "prompt_attention_mask"),
        negative_prompt=None,
        height=32,
        width=48,
        num_inference_steps=2,
        guidance_scale=4.0,
        use_resolution_binning=False,
        output_type="latent",
    )
    try:
        with seg.enable_seg(host, blur_sigma=1.0, share_prefix=share_prefix):
            result = host(**call, generator=torch.Generator().manual_seed(0)).images
    finally:
        for handle in handles:
            handle.remove()
    if share_prefix:
        assert seen == {0: [2, 2], 1: [2, 1, 2, 1]}
    else:
        assert seen == {0: [3, 3], 1: [3, 3]}
    reference = make_pipe(seg.PixArtSigmaSEGPipeline, parts)(
        **call, seg_blur_sigma=1.0, generator=torch.Generator().manual_seed(0)
    ).images
    assert (result - reference).abs().max() <= TOLERANCE


# HunyuanDiT -------------------------------------------------------------------------------------------
def hunyuan_parts():
    from diffusers import AutoencoderKL, DDIMScheduler, HunyuanDiT2DModel

    torch.manual_seed(0)
    transformer = HunyuanDiT2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        patch_size=2,
        sample_size=16,
        hidden_size=16,
        num_layers=4,
        cross_attention_dim=32,
        cross_attention_dim_t5=32,
        pooled_projection_dim=16,
        text_len=6,
        text_len_t5=7,
    )
    vae = AutoencoderKL(  # the pipeline lays its rotary grid out for an 8× VAE
        block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    return dict(
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        transformer=sharp(transformer),
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=None,
        tokenizer_2=None,
    )


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("sigma", [2.0, 10000.0])
def test_hunyuan_dit_matches_the_reference(cfg, sigma):
    """Its long skip connections carry pre-fork activations into later blocks: they get perturbed copies."""
    parts = hunyuan_parts()
    ours, host = make_pipe(seg.HunyuanDiTSEGPipeline, parts), make_pipe(diffusers.HunyuanDiTPipeline, parts)
    call = dict(
        embeddings(6, 32, "prompt_attention_mask"),
        **embeddings(7, 32, "prompt_attention_mask", suffix="_2"),
        height=128,
        width=192,
        num_inference_steps=3,
        guidance_scale=4.0 if cfg else 1.0,
        use_resolution_binning=False,
    )
    check(ours, host, ["blocks.2.attn1"], call, sigma, cfg, 2)


# Sana -------------------------------------------------------------------------------------------------
def sana_parts(qk_norm: str | None):
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=3,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=16,
        patch_size=1,
        qk_norm=qk_norm,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types=("ResBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3,
        encoder_block_out_channels=(8, 16, 16),
        decoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), ()),
        decoder_qkv_multiscales=((), (), ()),
        decoder_norm_types="rms_norm",
    )
    return dict(
        tokenizer=None,
        text_encoder=None,
        vae=vae.eval(),
        transformer=sharp(transformer),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


@pytest.mark.parametrize("qk_norm", [None, "rms_norm_across_heads"], ids=["sana", "sana-1.5-qk-norm"])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_sana_linear_attention_matches_the_reference(qk_norm, cfg):
    parts = sana_parts(qk_norm)
    ours, host = make_pipe(seg.SanaSEGPipeline, parts), make_pipe(diffusers.SanaPipeline, parts)
    call = dict(
        embeddings(6, 32, "prompt_attention_mask"),
        negative_prompt=None,
        height=64,  # Sana asks for multiples of 32 pixels; its 4× VAE here gives a 16 × 24 grid
        width=96,
        num_inference_steps=3,
        guidance_scale=4.0 if cfg else 1.0,
        use_resolution_binning=False,
    )
    check(ours, host, ["transformer_blocks.1.attn1"], call, 1.0, cfg, 1, grid=(16, 24))


# AuraFlow ---------------------------------------------------------------------------------------------
def auraflow_parts():
    from diffusers import AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = AuraFlowTransformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,  # its width: the register tokens join the projected text
        out_channels=4,
        pos_embed_max_size=256,
    )
    # Random weights barely let blurred queries reach the output: the per-head LayerNorm (no weights) normalises
    # scaled projections back, so the softmax scale sharpens the attention; a block's attention output reaches
    # the residual only through its gated feed-forward, so the gates and the feed-forward's input grow too.
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if type(module).__name__ == "Attention":
                module.scale *= 16
            elif name.endswith(("norm1.linear", "norm1_context.linear", "ff.linear_1", "ff_context.linear_1")):
                module.weight.mul_(4)
    return dict(
        tokenizer=None,
        text_encoder=None,
        vae=_tiny_vae(),
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


AURAFLOW_TEXT = 5
AURAFLOW_CALL = dict(embeddings(AURAFLOW_TEXT, 32, "prompt_attention_mask"), height=32, width=48, num_inference_steps=3)


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize(
    ("layers", "sigma"),
    [(None, 2.0), (None, math.inf), (["joint_transformer_blocks.0.attn"], 2.0)],
    ids=["default-single-block", "default-single-block-inf", "joint-block"],
)
def test_auraflow_matches_the_reference(cfg, layers, sigma):
    """The default layer is the middle of the three blocks, the first single block: its queries are [8 register
    tokens, the text, the image]; a joint block's image queries come alone from ``to_q``."""
    parts = auraflow_parts()
    ours, host = make_pipe(seg.AuraFlowSEGPipeline, parts), make_pipe(diffusers.AuraFlowPipeline, parts)
    call = dict(AURAFLOW_CALL, guidance_scale=4.0 if cfg else 1.0)
    names = layers or ["single_transformer_blocks.0.attn"]
    registers = parts["transformer"].register_tokens.shape[1]
    text = {"single_transformer_blocks.0.attn": registers + AURAFLOW_TEXT}
    check(ours, host, names, call, sigma, cfg, 1, text_tokens=text, seg_layers=layers)


def test_auraflow_perturbed_call_replays_the_blocks_before_the_first_seg_block_inside_its_window():
    """Under CFG the host's call runs every block on its two rows; SEG's perturbed call (one row) replays the
    joint block before the default SEG block, so that block computes in the host's calls only, and the single
    blocks from the SEG block on run again. Outside the window (AuraFlow hands its denoiser t / 1000) no
    perturbed call is made."""
    parts = auraflow_parts()
    ours = make_pipe(seg.AuraFlowSEGPipeline, parts)
    model = parts["transformer"]

    def computed_rows(steps: int, **window) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        watched = {"joint.0": model.joint_transformer_blocks[0], "single.0": model.single_transformer_blocks[0]}
        handles = [  # the query projection computes only where the block really runs
            block.attn.to_q.register_forward_hook(
                lambda _, args, output, name=name: rows.setdefault(name, []).append(output.shape[0])
            )
            for name, block in watched.items()
        ]
        try:
            ours(
                **dict(AURAFLOW_CALL, num_inference_steps=steps),
                guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0),
                output_type="latent",
                **window,
            )
        finally:
            for handle in handles:
                handle.remove()
        return rows

    assert computed_rows(3) == {"joint.0": [2, 2, 2], "single.0": [2, 1, 2, 1, 2, 1]}
    assert computed_rows(4, seg_guidance_end=0.5) == {"joint.0": [2, 2, 2, 2], "single.0": [2, 1, 2, 1, 2, 2]}


# SD3 ControlNet ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_sd3_controlnet_matches_the_reference(cfg):
    """ControlNet residuals join between blocks from the first on: the perturbed rows join at the input."""
    from diffusers import SD3ControlNetModel

    parts = tiny_sd3_components(seed=0)
    torch.manual_seed(5)
    controlnet = SD3ControlNetModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=32,
    )
    with torch.no_grad():
        for block in controlnet.controlnet_blocks:  # zero-initialised: give the control a real effect
            block.weight.normal_(0.0, 0.2)
    parts["controlnet"] = controlnet.eval()
    ours = make_pipe(seg.StableDiffusion3ControlNetSEGPipeline, parts)
    host = make_pipe(diffusers.StableDiffusion3ControlNetPipeline, parts)
    call = dict(
        prompt="a cube",
        control_image=picture(2, (48, 32)),
        height=32,
        width=48,
        num_inference_steps=3,
        guidance_scale=4.0 if cfg else 1.0,
        max_sequence_length=16,
    )
    check(ours, host, ["transformer_blocks.1.attn"], call, 1.0, cfg, 2)


def _raise(*args, **kwargs):
    raise RuntimeError("interrupted by the user")


@pytest.mark.parametrize("family", ["qwen-image", "pixart", "hunyuandit", "sana", "auraflow", "sd3-controlnet"])
def test_hooks_are_gone_after_an_exception(family):
    """A callback that raises mid-loop (an interrupt) leaves no SEG hook on the denoiser."""
    if family == "qwen-image":
        pipe = make_pipe(seg.QwenImageSEGPipeline, qwen_parts())
        call = dict(QWEN_CALL, true_cfg_scale=4.0)
    elif family == "pixart":
        pipe = make_pipe(seg.PixArtSigmaSEGPipeline, pixart_parts())
        call = dict(embeddings(6, 32, "prompt_attention_mask"), negative_prompt=None, height=32, width=48)
    elif family == "hunyuandit":
        pipe = make_pipe(seg.HunyuanDiTSEGPipeline, hunyuan_parts())
        call = dict(
            embeddings(6, 32, "prompt_attention_mask"),
            **embeddings(7, 32, "prompt_attention_mask", suffix="_2"),
            height=128,
            width=192,
        )
    elif family == "sana":
        pipe = make_pipe(seg.SanaSEGPipeline, sana_parts(None))
        call = dict(embeddings(6, 32, "prompt_attention_mask"), negative_prompt=None, height=64, width=96)
    elif family == "auraflow":
        pipe = make_pipe(seg.AuraFlowSEGPipeline, auraflow_parts())
        call = dict(AURAFLOW_CALL, guidance_scale=4.0)
    else:
        parts = tiny_sd3_components(seed=0)
        parts["controlnet"] = diffusers.SD3ControlNetModel(
            sample_size=16,
            patch_size=2,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
            pos_embed_max_size=32,
        )
        pipe = make_pipe(seg.StableDiffusion3ControlNetSEGPipeline, parts)
        call = dict(prompt="a cube", control_image=picture(2, (48, 32)), height=32, width=48, max_sequence_length=16)
    accepts = inspect.signature(pipe.__call__).parameters
    if "use_resolution_binning" in accepts:
        call["use_resolution_binning"] = False
    # PixArt still takes the older per-step callback
    call.update(callback_on_step_end=_raise) if "callback_on_step_end" in accepts else call.update(callback=_raise)
    with pytest.raises(RuntimeError, match="interrupted by the user"):
        pipe(**{**call, "num_inference_steps": 3}, output_type="latent")
    assert no_hooks_left(pipe.transformer)
