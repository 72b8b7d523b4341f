"""SEG as a Modular Diffusers guider, against the independent references."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import ClassifierFreeGuidance, StableDiffusionXLPipeline
from reference_dit import reference_seg_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, latents, layer_names, make_pipe, no_hooks_left
from reference import reference_seg
from smoothed_energy_guidance.testing import tiny_sd3_components, tiny_sdxl_components

pytestmark = pytest.mark.filterwarnings("ignore:Guiders are currently an experimental feature")


@pytest.fixture(scope="module")
def sdxl_parts():
    return tiny_sdxl_components(seed=0)


def modular(blocks_name: str, parts: dict, guider) -> object:
    import diffusers.modular_pipelines as modular_pipelines

    pipe = getattr(modular_pipelines, blocks_name)().init_pipeline()
    pipe.update_components(**parts, guider=guider)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = [
    (5.0, 1.0, {}, "mid_block"),
    (5.0, math.inf, dict(layers=["up"]), "up_blocks"),
    (1.0, 2.0, dict(layers="d0-d1"), "down_blocks"),
    (1.0, 100.0, {}, "mid_block"),
]


@pytest.mark.parametrize("cfg, sigma, layer_args, part", CASES)
def test_modular_sdxl_matches_the_reference(sdxl_parts, cfg, sigma, layer_args, part):
    guider = seg.SmoothedEnergyGuidance(guidance_scale=cfg, blur_sigma=sigma, **layer_args)
    pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, guider)
    ours = pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents")
    host = make_pipe(StableDiffusionXLPipeline, sdxl_parts)
    call = dict(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), guidance_scale=cfg)
    names = layer_names(host.unet, part)[:2] if part == "down_blocks" else layer_names(host.unet, part)
    with reference_seg(host.unet, names, sigma, 3.0, cfg, cfg > 1):
        reference = host(**call, output_type="latent").images
    plain = host(**call, output_type="latent").images
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
    assert no_hooks_left(sdxl_parts["unet"])


def test_modular_sdxl_runs_no_extra_pass_and_includes_step_zero(sdxl_parts):
    seen: list[int] = []
    unet = sdxl_parts["unet"]
    handle = unet.conv_out.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, seg_guidance_start=0.0, seg_guidance_stop=0.5)
        pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, guider)
        pipe(prompt="a cube", num_inference_steps=4, latents=latents(1, 16, 16), output="latents")
    finally:
        handle.remove()
    # per step: the cond call (with the perturbed rows forked in on steps 0 and 1), then the uncond call
    assert seen == [2, 1, 2, 1, 1, 1, 1, 1]


def test_modular_sd3_without_cfg_matches_the_reference():
    parts = tiny_sd3_components(seed=0)
    common = dict(prompt="a cube", num_inference_steps=3, height=32, width=48, max_sequence_length=16)
    noise = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0, seg_guidance_layers=[2], seg_blur_sigma=1.0)
    pipe = modular("StableDiffusion3AutoBlocks", parts, guider)
    ours = pipe(**common, latents=noise, output="latents")
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))
    plain = pipe(**common, latents=noise, output="latents")
    with reference_seg_transformer(parts["transformer"], ["transformer_blocks.2.attn"], (8, 12), 1.0, 3.0, False):
        reference = pipe(**common, latents=noise, output="latents")
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def test_diffusers_arguments_and_config_round_trip(tmp_path):
    from diffusers.hooks.smoothed_energy_guidance_utils import SmoothedEnergyGuidanceConfig

    guider = seg.SmoothedEnergyGuidance(
        guidance_scale=4.0,
        seg_guidance_scale=2.5,
        seg_blur_sigma=20000.0,
        seg_guidance_config=SmoothedEnergyGuidanceConfig(indices=[1, 2], fqn="auto").to_dict(),
        seg_guidance_start=0.1,
        seg_guidance_stop=0.9,
        guidance_rescale=0.3,
    )
    assert guider.seg.scale == 2.5 and math.isinf(guider.seg.blur_sigma) and guider.seg.layers == (1, 2)
    guider.save_pretrained(tmp_path)
    loaded = seg.SmoothedEnergyGuidance.from_pretrained(tmp_path)
    saved = {k: v for k, v in loaded.config.items() if not k.startswith("_")}
    assert saved == {k: v for k, v in guider.config.items() if not k.startswith("_")}
    assert loaded.seg == guider.seg
    ours = seg.SmoothedEnergyGuidance(scale=3.0, blur_sigma=4.0, layers=["mid"])
    assert ours.seg == seg.SegConfig(scale=3.0, blur_sigma=4.0, layers=("mid",))
    with pytest.raises(ValueError, match="Pass only one of layers / seg_guidance_layers"):
        seg.SmoothedEnergyGuidance(layers=["mid"], seg_guidance_layers=[7])
    with pytest.raises(ValueError, match="seg_scale must be >= 0"):
        seg.SmoothedEnergyGuidance(seg_guidance_scale=-1.0)
    # a lowered infinity threshold is honoured: σ above it gives uniform queries
    assert math.isinf(seg.SmoothedEnergyGuidance(seg_blur_sigma=50.0, seg_blur_threshold_inf=10.0).seg.blur_sigma)


def test_scale_zero_is_plain_cfg_with_no_hooks(sdxl_parts):
    pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, seg.SmoothedEnergyGuidance(guidance_scale=5.0, scale=0.0))
    ours = pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents")
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=5.0))
    assert torch.equal(ours, pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents"))


def _picture(seed: int, mode: str = "RGB"):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3 if mode == "RGB" else 1), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


def test_modular_sdxl_inpaint_without_cfg_matches_the_reference(sdxl_parts):
    """diffusers' modular inpainting differs from its classic pipeline, so the reference runs on it too."""
    call = dict(prompt="a cube", image=_picture(0), mask_image=_picture(2, "L"), strength=0.6, num_inference_steps=5)
    guider = seg.SmoothedEnergyGuidance(guidance_scale=1.0, blur_sigma=1.0)
    pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, guider)
    ours = pipe(**call, generator=torch.Generator().manual_seed(1), output="latents")
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))
    plain = pipe(**call, generator=torch.Generator().manual_seed(1), output="latents")
    with reference_seg(sdxl_parts["unet"], layer_names(sdxl_parts["unet"], "mid_block"), 1.0, 3.0, 1.0, False):
        reference = pipe(**call, generator=torch.Generator().manual_seed(1), output="latents")
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


@pytest.mark.parametrize("task", ["img2img", "controlnet"])
def test_modular_sdxl_tasks_match_the_reference(sdxl_parts, task):
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLImg2ImgPipeline

    from smoothed_energy_guidance.testing import tiny_controlnet

    extra_parts, ours_call, host_call = {}, {}, {}
    if task == "controlnet":
        extra_parts["controlnet"] = tiny_controlnet(sdxl_parts["unet"], seed=1)
        ours_call = dict(control_image=_picture(3), latents=latents(1, 16, 16))
        host_call = dict(image=_picture(3), latents=latents(1, 16, 16))
        host_class = StableDiffusionXLControlNetPipeline
    else:
        ours_call = dict(image=_picture(0), strength=0.6, generator=torch.Generator().manual_seed(1))
        host_call = dict(ours_call)
        host_class = StableDiffusionXLImg2ImgPipeline
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0)
    pipe = modular("StableDiffusionXLAutoBlocks", {**sdxl_parts, **extra_parts}, guider)
    ours = pipe(prompt="a cube", num_inference_steps=5, output="latents", **ours_call)
    host = make_pipe(host_class, sdxl_parts, **extra_parts)
    for value in host_call.values():
        if isinstance(value, torch.Generator):
            value.manual_seed(1)
    with reference_seg(host.unet, layer_names(host.unet, "mid_block"), 1.0, 3.0, 5.0, True):
        reference = host("a cube", num_inference_steps=5, guidance_scale=5.0, output_type="latent", **host_call).images
    for value in host_call.values():
        if isinstance(value, torch.Generator):
            value.manual_seed(1)
    plain = host("a cube", num_inference_steps=5, guidance_scale=5.0, output_type="latent", **host_call).images
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def test_guider_hooks_are_removed_after_the_call_even_when_it_raises(sdxl_parts):
    unet = sdxl_parts["unet"]
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
    guider.prepare_models(unet)  # the cond batch: hooks on
    assert not no_hooks_left(unet)
    with pytest.raises(TypeError):  # missing SDXL conditioning makes the UNet raise inside the call
        unet(torch.randn(1, 3, 16, 16), 999, encoder_hidden_states=torch.randn(1, 77, 80))
    left = [m for m in unet.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert left == [unet] and not unet._forward_pre_hooks  # only two inert hooks, on the UNet itself
    guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(500))  # the next step
    assert no_hooks_left(unet)
    # and a call that returns removes everything at once
    pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, guider)
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(no_hooks_left(unet.mid_block)))
    try:
        pipe(prompt="a cube", num_inference_steps=2, latents=latents(1, 16, 16), output="latents")
    finally:
        handle.remove()
    assert seen == [False, True, False, True]  # hooks only during each step's cond call
    assert no_hooks_left(unet)


def test_modular_sdxl_odd_grid_index_layers_and_window_from_step_zero(sdxl_parts):
    """diffusers' modular SDXL sizes an odd latent grid differently from its classic pipeline, so the
    reference runs on the modular pipeline itself (one cond call per step, CFG off)."""
    guider = seg.SmoothedEnergyGuidance(
        guidance_scale=1.0, seg_blur_sigma=10000.0, layers=["m0", "u3-u5"], seg_guidance_stop=0.5
    )
    pipe = modular("StableDiffusionXLAutoBlocks", sdxl_parts, guider)
    call = dict(prompt="a cube", num_inference_steps=4, output="latents")
    ours = pipe(**call, latents=latents(1, 9, 13))
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))
    unet = sdxl_parts["unet"]
    mid, up = layer_names(unet, "mid_block"), layer_names(unet, "up_blocks")
    with reference_seg(unet, [mid[0], *up[3:6]], 10000.0, 3.0, 1.0, False, active_calls={0, 1}):
        reference = pipe(**call, latents=latents(1, 9, 13))
    plain = pipe(**call, latents=latents(1, 9, 13))
    assert ours.shape[-2:] == (9, 13)
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT


def test_modular_sdxl_blurs_peft_lora_queries():
    from peft import LoraConfig

    parts = tiny_sdxl_components(seed=5)
    torch.manual_seed(3)
    parts["unet"].add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"], init_lora_weights=False))
    assert type(parts["unet"].mid_block.attentions[0].transformer_blocks[0].attn1.to_q).__module__.startswith("peft")
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0)
    ours = modular("StableDiffusionXLAutoBlocks", parts, guider)(
        prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents"
    )
    host = make_pipe(StableDiffusionXLPipeline, parts)
    call = dict(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), guidance_scale=5.0)
    with reference_seg(host.unet, layer_names(host.unet, "mid_block"), 1.0, 3.0, 5.0, True):
        reference = host(**call, output_type="latent").images
    assert (ours - reference).abs().max() <= TOLERANCE
    assert (host(**call, output_type="latent").images - reference).abs().max() > MIN_EFFECT
