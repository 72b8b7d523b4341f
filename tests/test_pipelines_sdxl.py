"""img2img, inpaint, ControlNet, IP-Adapter, LoRA and fused QKV, each against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_matches_reference, latents, layer_names, make_pipe
from smoothed_energy_guidance.testing import tiny_controlnet, tiny_sdxl_components


def picture(seed: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def generator_call(**kwargs):
    return lambda: dict(kwargs, generator=torch.Generator().manual_seed(7), output_type="latent")


def mid(unet):
    return layer_names(unet, "mid_block")


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_img2img_matches_reference(components, cfg):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from smoothed_energy_guidance import StableDiffusionXLSEGImg2ImgPipeline

    ours = make_pipe(StableDiffusionXLSEGImg2ImgPipeline, components)
    host = make_pipe(StableDiffusionXLImg2ImgPipeline, components)
    assert_matches_reference(
        ours,
        host,
        mid(host.unet),
        dict(seg_scale=3.0, seg_blur_sigma=1.0),
        generator_call(
            prompt="a cube",
            image=picture(0),
            strength=0.7,
            num_inference_steps=5,
            guidance_scale=5.0 if cfg else 1.0,
            guidance_rescale=0.5 if cfg else 0.0,
        ),
        1.0,
        cfg,
        rescale=0.5 if cfg else 0.0,
    )


def test_inpaint_with_nine_channel_unet_matches_reference():
    from diffusers import StableDiffusionXLInpaintPipeline

    from smoothed_energy_guidance import StableDiffusionXLSEGInpaintPipeline

    parts = tiny_sdxl_components(seed=3, unet_in_channels=9)
    ours = make_pipe(StableDiffusionXLSEGInpaintPipeline, parts)
    host = make_pipe(StableDiffusionXLInpaintPipeline, parts)
    assert host.unet.config.in_channels == 9
    assert_matches_reference(
        ours,
        host,
        mid(host.unet),
        dict(seg_scale=3.0, seg_blur_sigma=2.0),
        generator_call(
            prompt="a cube",
            image=picture(1),
            mask_image=picture(2, mode="L"),
            strength=0.9,
            num_inference_steps=4,
            guidance_scale=5.0,
        ),
        2.0,
        True,
    )


@pytest.mark.parametrize("variant", ["single", "multi", "guess-mode"])
def test_controlnet_matches_reference_with_cond_residuals(components, variant):
    from diffusers import StableDiffusionXLControlNetPipeline

    from smoothed_energy_guidance import (
        StableDiffusionXLControlNetSEGPipeline,
        StableDiffusionXLSEGControlNetPipeline,
    )

    assert StableDiffusionXLSEGControlNetPipeline is StableDiffusionXLControlNetSEGPipeline
    if variant == "multi":
        controlnet = [tiny_controlnet(components["unet"], seed=1), tiny_controlnet(components["unet"], seed=2)]
        image = [picture(3), picture(4)]
    else:
        controlnet, image = tiny_controlnet(components["unet"], seed=1), picture(3)
    ours = make_pipe(StableDiffusionXLControlNetSEGPipeline, components, controlnet=controlnet)
    host = make_pipe(StableDiffusionXLControlNetPipeline, components, controlnet=controlnet)
    call = generator_call(
        prompt="a cube",
        image=image,
        num_inference_steps=3,
        guidance_scale=5.0,
        guess_mode=variant == "guess-mode",
        latents=latents(1, 16, 16),
    )
    with_control = assert_matches_reference(
        ours, host, mid(host.unet), dict(seg_scale=3.0, seg_blur_sigma=1.0), call, 1.0, True
    )
    # the control image must matter, or the residual routing was not tested
    without = ours(**{**call(), "controlnet_conditioning_scale": 0.0}, seg_scale=3.0, seg_blur_sigma=1.0).images
    assert (with_control - without).abs().max() > 1e-2


def _ip_adapter_state_dict(unet, image_embed_dim: int = 16):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor

    torch.manual_seed(5)
    cross = unet.config.cross_attention_dim
    ip_layers, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            block = name.split(".")[0]
            hidden = unet.config.block_out_channels[-1 if block == "mid_block" else int(name.split(".")[1])]
            if block == "up_blocks":
                hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
            processor = IPAdapterAttnProcessor(hidden, cross, scale=1.0).state_dict()
            ip_layers[f"{key_id}.to_k_ip.weight"] = processor["to_k_ip.0.weight"] * 5
            ip_layers[f"{key_id}.to_v_ip.weight"] = processor["to_v_ip.0.weight"] * 5
            key_id += 2
    image_proj = {
        "proj.weight": torch.randn(cross * 4, image_embed_dim) * 0.3,
        "proj.bias": torch.zeros(cross * 4),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def test_ip_adapter_embeddings_get_perturbed_copies():
    from diffusers import StableDiffusionXLPipeline

    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline

    parts = tiny_sdxl_components(seed=4)
    parts["unet"]._load_ip_adapter_weights([_ip_adapter_state_dict(parts["unet"])])
    ours = make_pipe(StableDiffusionXLSEGPipeline, parts)
    host = make_pipe(StableDiffusionXLPipeline, parts)
    embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(9))]  # [negative, positive]
    call = generator_call(
        prompt="a cube",
        num_inference_steps=3,
        guidance_scale=5.0,
        latents=latents(1, 16, 16),
        ip_adapter_image_embeds=embeds,
    )
    with_ip = assert_matches_reference(
        ours, host, mid(host.unet), dict(seg_scale=3.0, seg_blur_sigma=1.0), call, 1.0, True
    )
    other = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(10))]
    changed = ours(**{**call(), "ip_adapter_image_embeds": other}, seg_scale=3.0, seg_blur_sigma=1.0).images
    assert (with_ip - changed).abs().max() > 1e-2, "IP-Adapter embeddings had no effect on the output"


def test_lora_on_to_q_is_still_blurred():
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline

    parts = tiny_sdxl_components(seed=5)
    torch.manual_seed(6)
    parts["unet"].add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], init_lora_weights=False))
    to_q = parts["unet"].mid_block.attentions[0].transformer_blocks[0].attn1.to_q
    assert type(to_q).__module__.startswith("peft"), "the LoRA did not wrap to_q"
    ours = make_pipe(StableDiffusionXLSEGPipeline, parts)
    host = make_pipe(StableDiffusionXLPipeline, parts)
    call = generator_call(prompt="a cube", num_inference_steps=3, guidance_scale=5.0, latents=latents(1, 16, 16))
    with_lora = assert_matches_reference(
        ours, host, mid(host.unet), dict(seg_scale=3.0, seg_blur_sigma=1.0), call, 1.0, True
    )
    parts["unet"].disable_adapters()
    try:
        without = ours(**call(), seg_scale=3.0, seg_blur_sigma=1.0).images
    finally:
        parts["unet"].enable_adapters()
    assert (with_lora - without).abs().max() > 1e-2, "the LoRA had no effect; the test would prove nothing"


def test_fused_qkv_projections_work():
    from diffusers import StableDiffusionXLPipeline

    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline

    parts = tiny_sdxl_components(seed=6)
    ours = make_pipe(StableDiffusionXLSEGPipeline, parts)
    host = make_pipe(StableDiffusionXLPipeline, parts)
    call = generator_call(prompt="a cube", num_inference_steps=3, guidance_scale=5.0, latents=latents(1, 16, 16))
    unfused = ours(**call(), seg_scale=3.0, seg_blur_sigma=1.0).images
    ours.fuse_qkv_projections()
    assert parts["unet"].mid_block.attentions[0].transformer_blocks[0].attn1.fused_projections
    fused = assert_matches_reference(
        ours, host, mid(host.unet), dict(seg_scale=3.0, seg_blur_sigma=1.0), call, 1.0, True
    )
    assert (fused - unfused).abs().max() <= 1e-4


def test_fusing_after_enable_seg_raises_with_the_fix(components):
    from diffusers import StableDiffusionXLPipeline

    import smoothed_energy_guidance as seg

    parts = tiny_sdxl_components(seed=7)
    pipe = make_pipe(StableDiffusionXLPipeline, parts)
    with seg.enable_seg(pipe, blur_sigma=1.0):
        pipe.fuse_qkv_projections()
        with pytest.raises(RuntimeError, match="unfuse_qkv_projections"):
            pipe(prompt="a cube", num_inference_steps=2, output_type="latent", latents=latents(1, 16, 16))
