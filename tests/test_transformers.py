"""SD3 / SD3.5 and Flux.1 against the independent transformer reference, plus their guarantees."""

from __future__ import annotations

import math

import pytest
import torch
from reference_dit import reference_seg_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import tiny_flux_components, tiny_sd3_components

TEXT = 16  # max_sequence_length in these tests: the T5 tokens ahead of the image in Flux's single blocks


@pytest.fixture(scope="module")
def sd3_parts():
    return tiny_sd3_components(seed=0)


@pytest.fixture(scope="module")
def flux_parts():
    return tiny_flux_components(seed=0)


def run_pair(
    ours, host, names, seg_args, call, sigma, cfg, guidance=5.0, text_tokens=None, token_dim=2, true_cfg_scale=None
):
    def fresh():
        return dict(call, generator=torch.Generator().manual_seed(0), output_type="latent")

    result = ours(**fresh(), **seg_args).images
    grid = (call["height"] // 4, call["width"] // 4)
    with reference_seg_transformer(
        host.transformer,
        names,
        grid,
        sigma,
        seg_args.get("seg_scale", 3.0),
        cfg,
        guidance,
        text_tokens,
        token_dim,
        true_cfg_scale,
    ):
        reference = host(**fresh()).images
    plain = host(**fresh()).images
    assert (result - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
    assert no_hooks_left(ours.transformer)
    return result


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize(
    "layers, names",
    [
        (None, ["transformer_blocks.1.attn"]),  # default: the middle of 3 blocks
        (["blocks.0"], ["transformer_blocks.0.attn", "transformer_blocks.0.attn2"]),  # SD3.5 dual attention
        (["1-2"], ["transformer_blocks.1.attn", "transformer_blocks.2.attn"]),
        ([2], ["transformer_blocks.2.attn"]),
    ],
    ids=["default", "dual-attention", "range", "integer"],
)
@pytest.mark.parametrize("sigma, size", [(1.0, (32, 48)), (math.inf, (48, 32)), (2.0, (40, 40))])
def test_sd3_matches_reference(sd3_parts, cfg, layers, names, sigma, size):
    from diffusers import StableDiffusion3Pipeline

    ours = make_pipe(seg.StableDiffusion3SEGPipeline, sd3_parts)
    host = make_pipe(StableDiffusion3Pipeline, sd3_parts)
    run_pair(
        ours,
        host,
        names,
        dict(seg_scale=3.0, seg_blur_sigma=sigma, seg_applied_layers=layers),
        dict(
            prompt="a cube",
            num_inference_steps=3,
            guidance_scale=5.0 if cfg else 1.0,
            height=size[0],
            width=size[1],
            max_sequence_length=TEXT,
        ),
        sigma,
        cfg,
    )


def test_sd3_without_query_norm_blurs_to_q():
    from diffusers import StableDiffusion3Pipeline

    parts = tiny_sd3_components(seed=1, qk_norm=None)
    ours = make_pipe(seg.StableDiffusion3SEGPipeline, parts)
    host = make_pipe(StableDiffusion3Pipeline, parts)
    run_pair(
        ours,
        host,
        ["transformer_blocks.1.attn"],
        dict(seg_blur_sigma=1.0, seg_applied_layers=["blocks.1"]),
        dict(prompt="a cube", num_inference_steps=3, guidance_scale=5.0, height=32, width=48, max_sequence_length=TEXT),
        1.0,
        True,
    )


@pytest.mark.parametrize(
    "layers, names",
    [
        (None, ["single_transformer_blocks.0.attn"]),  # default: the middle of double.0, single.0, single.1
        (["double.0"], ["transformer_blocks.0.attn"]),
        (
            ["double.0", "single.0-1"],
            ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"],
        ),
    ],
    ids=["default-single", "double", "both-stacks"],
)
@pytest.mark.parametrize("sigma, size", [(1.0, (32, 48)), (math.inf, (48, 32))])
def test_flux_matches_reference(flux_parts, layers, names, sigma, size):
    from diffusers import FluxPipeline

    ours = make_pipe(seg.FluxSEGPipeline, flux_parts)
    host = make_pipe(FluxPipeline, flux_parts)
    text = {name: TEXT for name in names if name.startswith("single")}
    run_pair(
        ours,
        host,
        names,
        dict(seg_scale=3.0, seg_blur_sigma=sigma, seg_applied_layers=layers),
        dict(prompt="a cube", num_inference_steps=3, height=size[0], width=size[1], max_sequence_length=TEXT),
        sigma,
        False,
        text_tokens=text,
        token_dim=1,
    )


def test_flux_true_cfg_composes_with_seg(flux_parts):
    from diffusers import FluxPipeline

    ours = make_pipe(seg.FluxSEGPipeline, flux_parts)
    host = make_pipe(FluxPipeline, flux_parts)
    names = ["single_transformer_blocks.1.attn"]
    run_pair(
        ours,
        host,
        names,
        dict(seg_scale=3.0, seg_blur_sigma=2.0, seg_applied_layers=["single.1"]),
        dict(
            prompt="a cube",
            negative_prompt="blurry",
            true_cfg_scale=4.0,
            num_inference_steps=3,
            height=32,
            width=32,
            max_sequence_length=TEXT,
        ),
        2.0,
        False,
        text_tokens={names[0]: TEXT},
        token_dim=1,
        true_cfg_scale=4.0,
    )


@pytest.mark.parametrize("true_cfg", [4.0, 1.0], ids=["true-cfg", "no-cfg"])
def test_flux_perturbed_call_replays_the_blocks_before_the_first_seg_block(flux_parts, true_cfg):
    """Flux's perturbed prediction is a call of its own right after the cond call: the double blocks and the
    single blocks before the SEG block return what the cond call computed (the result is the reference's:
    test_flux_matches_reference, test_flux_true_cfg_composes_with_seg)."""
    pipe = make_pipe(seg.FluxSEGPipeline, flux_parts)
    transformer = pipe.transformer
    counts = {"double.0": 0, "single.0": 0, "single.1": 0}
    modules = {
        "double.0": transformer.transformer_blocks[0].attn.to_q,
        "single.0": transformer.single_transformer_blocks[0].attn.to_q,
        "single.1": transformer.single_transformer_blocks[1].attn.to_q,
    }
    handles = [
        module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
        for name, module in modules.items()
    ]
    negative = dict(negative_prompt="blurry") if true_cfg > 1 else {}
    try:
        pipe(
            prompt="a cube",
            **negative,
            true_cfg_scale=true_cfg,
            num_inference_steps=2,
            height=32,
            width=32,
            max_sequence_length=TEXT,
            output_type="latent",
            seg_blur_sigma=1.0,
            seg_applied_layers=["single.1"],
        )
    finally:
        for handle in handles:
            handle.remove()
    host_calls = 2 if true_cfg > 1 else 1
    steps = 2
    assert counts == {
        "double.0": host_calls * steps,
        "single.0": host_calls * steps,
        "single.1": (host_calls + 1) * steps,
    }
    assert no_hooks_left(transformer)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_shared_prefix_equals_repeated_pass(sd3_parts, flux_parts, family):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls, parts, layers = (
        (StableDiffusion3Pipeline, sd3_parts, ["blocks.2"])
        if family == "sd3"
        else (FluxPipeline, flux_parts, ["single.1"])
    )
    pipe = make_pipe(cls, parts)
    call = dict(
        prompt="a cube", num_inference_steps=3, height=32, width=48, max_sequence_length=TEXT, output_type="latent"
    )
    outputs = {}
    for share in (True, False):
        with seg.enable_seg(pipe, blur_sigma=1.0, layers=layers, share_prefix=share):
            outputs[share] = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    assert (outputs[True] - outputs[False]).abs().max() <= 1e-5
    assert no_hooks_left(pipe.transformer)


def test_transformer_layer_errors_and_exact_matching(sd3_parts, flux_parts):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    sd3 = make_pipe(StableDiffusion3Pipeline, sd3_parts)
    with pytest.raises(ValueError, match=r"Unknown layer 'mid'. Valid layers: 'blocks' \(blocks.0-blocks.2\)"):
        seg.enable_seg(sd3, layers=["mid"])
    with pytest.raises(ValueError, match=r"'blocks' has 3 blocks"):
        seg.enable_seg(sd3, layers=["blocks.3"])
    flux = make_pipe(FluxPipeline, flux_parts)
    with pytest.raises(ValueError, match=r"ambiguous here: write the stack, e.g. double.1 or single.1"):
        seg.enable_seg(flux, layers=["1"])
    assert no_hooks_left(sd3.transformer) and no_hooks_left(flux.transformer)


def test_flux_hooks_are_gone_after_an_exception(flux_parts):
    from diffusers import FluxPipeline

    pipe = make_pipe(seg.FluxSEGPipeline, flux_parts)
    forward = pipe.transformer.forward

    def fail(pipe, step, timestep, kwargs):
        raise KeyboardInterrupt

    call = dict(
        prompt="a cube",
        num_inference_steps=2,
        height=32,
        width=32,
        max_sequence_length=TEXT,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(KeyboardInterrupt):
        pipe(**call, callback_on_step_end=fail)
    assert no_hooks_left(pipe.transformer)
    assert pipe.transformer.forward == forward
    plain = make_pipe(FluxPipeline, flux_parts)
    again = dict(call, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        pipe(**again, seg_scale=0.0).images, plain(**dict(call, generator=torch.Generator().manual_seed(0))).images
    )


@pytest.mark.parametrize(
    "layers, guidance, part, chosen",
    [(None, 5.0, "mid_block", slice(None)), (["d1-d2"], 1.0, "down_blocks", slice(1, 3))],
    ids=["mid-cfg", "down-range-no-cfg"],
)
def test_sd15_pipeline_matches_the_unet_reference(layers, guidance, part, chosen):
    from diffusers import StableDiffusionPipeline

    from conftest import assert_matches_reference, latents, layer_names
    from smoothed_energy_guidance.testing import tiny_sd_components

    parts = tiny_sd_components(seed=0)
    ours = make_pipe(seg.StableDiffusionSEGPipeline, parts)
    host = make_pipe(StableDiffusionPipeline, parts)
    call = dict(
        prompt="a cube",
        num_inference_steps=3,
        guidance_scale=guidance,
        latents=latents(1, 12, 20),
        height=24,
        width=40,
        output_type="latent",
    )
    assert_matches_reference(
        ours,
        host,
        layer_names(host.unet, part)[chosen],
        dict(seg_blur_sigma=1.5, seg_applied_layers=layers),
        lambda: dict(call),
        1.5,
        guidance > 1,
    )


def test_from_pipe_picks_the_seg_class_for_every_family(sd3_parts, flux_parts):
    from diffusers import DDPMPipeline, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DModel

    from smoothed_energy_guidance.testing import tiny_sd_components

    for host_cls, parts, seg_cls in [
        (StableDiffusionPipeline, tiny_sd_components(), seg.StableDiffusionSEGPipeline),
        (StableDiffusion3Pipeline, sd3_parts, seg.StableDiffusion3SEGPipeline),
        (FluxPipeline, flux_parts, seg.FluxSEGPipeline),
    ]:
        host = make_pipe(host_cls, parts)
        converted = seg.from_pipe(host)
        assert type(converted) is seg_cls
        assert (converted.unet if hasattr(converted, "unet") else converted.transformer) is (
            host.unet if hasattr(host, "unet") else host.transformer
        )
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    unsupported = DDPMPipeline(unet, None)
    for action in (seg.from_pipe, seg.enable_seg):
        with pytest.raises(ValueError, match="not supported: SEG supports Stable Diffusion 1.x/2.x, Stable Diffusion"):
            action(unsupported)


@pytest.mark.parametrize("task", ["img2img", "inpaint", "controlnet"])
def test_sd15_img2img_inpaint_and_controlnet_match_the_reference(task):
    from diffusers import (
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
    )
    from PIL import Image

    from conftest import assert_matches_reference, layer_names
    from smoothed_energy_guidance.testing import tiny_controlnet, tiny_sd_components

    parts = tiny_sd_components(seed=2)
    image = Image.effect_noise((32, 32), 80).convert("RGB")
    extra, call = {}, dict(prompt="a cube", num_inference_steps=4, guidance_scale=5.0, output_type="latent")
    if task == "img2img":
        host_cls, seg_cls = StableDiffusionImg2ImgPipeline, seg.StableDiffusionSEGImg2ImgPipeline
        call.update(image=image, strength=0.75)
    elif task == "inpaint":
        host_cls, seg_cls = StableDiffusionInpaintPipeline, seg.StableDiffusionSEGInpaintPipeline
        call.update(image=image, mask_image=Image.effect_noise((32, 32), 90), strength=0.9)
    else:
        host_cls, seg_cls = StableDiffusionControlNetPipeline, seg.StableDiffusionControlNetSEGPipeline
        extra = {"controlnet": tiny_controlnet(parts["unet"], seed=4)}
        call.update(image=image, height=32, width=32)
    ours = make_pipe(seg_cls, parts, **extra)
    host = make_pipe(host_cls, parts, **extra)
    assert_matches_reference(
        ours,
        host,
        layer_names(host.unet, "mid_block"),
        dict(seg_scale=3.0, seg_blur_sigma=1.0),
        lambda: dict(call, generator=torch.Generator().manual_seed(3)),
        1.0,
        True,
    )


def _slg_call(images: int, seed_of_image_1: int = 0):
    noise = [torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(s)) for s in (0, seed_of_image_1 + 1)]
    return dict(
        prompt="a cube",
        num_inference_steps=4,
        guidance_scale=5.0,
        height=32,
        width=48,
        max_sequence_length=TEXT,
        num_images_per_prompt=images,
        latents=torch.cat(noise[:images]),
        skip_guidance_layers=[2],
        skip_layer_guidance_scale=2.8,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        output_type="latent",
    )


@pytest.mark.parametrize("images", [1, 2])
def test_sd3_skip_layer_guidance_composes_with_seg(sd3_parts, images):
    """uncond + g·(cond − uncond) + s·(cond − seg) + slg·(cond − skip), the host doing the SLG part itself."""
    from diffusers import StableDiffusion3Pipeline

    ours = make_pipe(seg.StableDiffusion3SEGPipeline, sd3_parts)
    host = make_pipe(StableDiffusion3Pipeline, sd3_parts)
    slg_calls = []
    handle = host.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: slg_calls.append(kwargs.get("skip_layers") is not None), with_kwargs=True
    )
    try:
        result = ours(**_slg_call(images), seg_blur_sigma=1.0).images
        with reference_seg_transformer(
            host.transformer, ["transformer_blocks.1.attn"], (8, 12), 1.0, 3.0, True, 5.0, hand_true_cond=True
        ):
            reference = host(**_slg_call(images)).images
    finally:
        handle.remove()
    assert sum(slg_calls) == 2 * 3  # skip-layer calls on steps 1-3, in both runs
    without_slg = host(**{**_slg_call(images), "skip_guidance_layers": None}).images
    assert (result - reference).abs().max() <= TOLERANCE
    assert (reference - host(**_slg_call(images)).images).abs().max() > MIN_EFFECT  # SEG matters
    assert (reference - without_slg).abs().max() > MIN_EFFECT  # skip-layer guidance matters
    if images == 2:  # image 0 never depends on image 1
        changed = ours(**_slg_call(images, seed_of_image_1=5), seg_blur_sigma=1.0).images
        assert torch.equal(changed[0], result[0]) or (changed[0] - result[0]).abs().max() <= 1e-6
