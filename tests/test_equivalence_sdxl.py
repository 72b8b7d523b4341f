"""SDXL text-to-image SEG against the independent reference of tests/reference.py (fp32, 1e-4)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, latents, layer_names, make_pipe

STEPS = 3


def compare(seg_pipe, plain_pipe, ref_layers, seg_args, call_args, sigma, cfg, rescale=0.0):
    call = dict(num_inference_steps=STEPS, output_type="latent", **call_args)
    return assert_matches_reference(seg_pipe, plain_pipe, ref_layers, seg_args, lambda: dict(call), sigma, cfg, rescale)


SIGMAS = [0.5, 1.0, 2.0, 10.0, 100.0, 9999.0, 10000.0, math.inf]


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_blur_sigmas_match_reference(seg_pipe, plain_pipe, sigma, cfg):
    guidance = 5.0 if cfg else 1.0
    compare(
        seg_pipe,
        plain_pipe,
        layer_names(plain_pipe.unet, "mid_block"),
        dict(seg_scale=3.0, seg_blur_sigma=sigma),
        dict(prompt="a red cube", guidance_scale=guidance, latents=latents(1, 16, 16)),
        sigma,
        cfg,
    )


def _mixed(unet):
    down, mid, up = (layer_names(unet, part) for part in ("down_blocks", "mid_block", "up_blocks"))
    return [down[1], mid[1], *up[2:5]]


@pytest.mark.parametrize(
    "seg_layers, pick",
    [
        (dict(seg_applied_layers=["down"]), lambda u: layer_names(u, "down_blocks")),
        (dict(seg_applied_layers=["up"]), lambda u: layer_names(u, "up_blocks")),
        (dict(seg_applied_layers=["mid", "up"]), lambda u: layer_names(u, "mid_block") + layer_names(u, "up_blocks")),
        (dict(seg_applied_layers_index=["d1", "m1", "u2-u4"]), _mixed),
        (dict(seg_applied_layers=["d1", "mid_block.attentions.0.transformer_blocks.1.attn1", "u2-4"]), _mixed),
        # index names take precedence over seg_applied_layers, as in the official pipeline
        (dict(seg_applied_layers=["mid"], seg_applied_layers_index=["u1"]), lambda u: layer_names(u, "up_blocks")[1:2]),
    ],
    ids=["down", "up", "mid+up", "index-names", "mixed-names", "index-precedence"],
)
def test_layer_selections_match_reference(seg_pipe, plain_pipe, seg_layers, pick):
    compare(
        seg_pipe,
        plain_pipe,
        pick(plain_pipe.unet),
        dict(seg_scale=3.0, seg_blur_sigma=2.0, **seg_layers),
        dict(prompt="a red cube", guidance_scale=5.0, latents=latents(1, 16, 16)),
        2.0,
        True,
    )


def test_several_prompts_and_images_per_prompt(seg_pipe, plain_pipe):
    compare(
        seg_pipe,
        plain_pipe,
        layer_names(plain_pipe.unet, "mid_block"),
        dict(seg_scale=2.5, seg_blur_sigma=4.0),
        dict(
            prompt=["a red cube", "a blue sphere"],
            negative_prompt=["blurry", "dark"],
            num_images_per_prompt=2,
            guidance_scale=6.0,
            latents=latents(4, 16, 16),
        ),
        4.0,
        True,
    )


def test_guidance_rescale(seg_pipe, plain_pipe):
    compare(
        seg_pipe,
        plain_pipe,
        layer_names(plain_pipe.unet, "mid_block"),
        dict(seg_scale=3.0, seg_blur_sigma=1.0),
        dict(prompt="a red cube", guidance_scale=7.0, guidance_rescale=0.7, latents=latents(1, 16, 16)),
        1.0,
        True,
        rescale=0.7,
    )


@pytest.mark.parametrize(
    "latent_hw, sigma",
    [((64, 96), 3.0), ((96, 48), math.inf), ((9, 13), 1.0), ((13, 9), 100.0), ((7, 7), 0.5)],
    ids=["64x96", "96x48", "odd-9x13", "odd-13x9", "odd-7x7"],
)
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_non_square_and_odd_sizes(seg_pipe, plain_pipe, latent_hw, sigma, cfg):
    height, width = latent_hw
    compare(
        seg_pipe,
        plain_pipe,
        layer_names(plain_pipe.unet, "mid_block") + layer_names(plain_pipe.unet, "up_blocks")[:2],
        dict(seg_scale=3.0, seg_blur_sigma=sigma, seg_applied_layers=["mid", "u0-u1"]),
        # height/width only feed SDXL's size conditioning; the latents set the real grid
        dict(
            prompt="a red cube",
            guidance_scale=5.0 if cfg else 1.0,
            height=8 * math.ceil(height / 4),
            width=8 * math.ceil(width / 4),
            latents=latents(1, height, width),
        ),
        sigma,
        cfg,
    )


def test_attention_at_two_levels_uses_each_layers_own_grid(components, plain_pipe):
    """A UNet with self-attention at full and half resolution, on an odd latent."""
    from diffusers import StableDiffusionXLPipeline

    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline
    from smoothed_energy_guidance.testing import sharpen_self_attention, tiny_sdxl_unet

    torch.manual_seed(1)
    unet = tiny_sdxl_unet(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
    sharpen_self_attention(unet, 4.0)
    parts = {**components, "unet": unet.eval()}
    ours = make_pipe(StableDiffusionXLSEGPipeline, parts)
    plain = make_pipe(StableDiffusionXLPipeline, parts)
    compare(
        ours,
        plain,
        layer_names(unet, "down_blocks") + layer_names(unet, "up_blocks"),
        dict(seg_scale=3.0, seg_blur_sigma=1.5, seg_applied_layers=["down", "up"]),
        dict(prompt="a red cube", guidance_scale=5.0, latents=latents(1, 11, 14)),
        1.5,
        True,
    )
