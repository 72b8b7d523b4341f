"""Flux.1 Fill, Flux.1 Kontext, Flux.1 img2img with true CFG, and Chroma, against the independent
transformer reference (``reference_dit``).

Kontext puts the reference image's tokens after the generated image's: in double-stream blocks the
image queries are [image, reference], in single-stream blocks [text, image, reference]. Only the
generated image's queries are blurred, over its own grid.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from reference_dit import reference_seg_transformer

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import (
    _tiny_vae,
    sharpen_transformer,
    tiny_flux_components,
    tiny_flux_transformer,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
)

TEXT = 16  # max_sequence_length: the text tokens ahead of the image in single-stream blocks
HEIGHT, WIDTH = 32, 48
GRID = (HEIGHT // 4, WIDTH // 4)  # VAE ×2, then 2×2 packing: a non-square 8×12 token grid
DEFAULT = ["single_transformer_blocks.0.attn"]  # the middle of double.0, single.0, single.1


def picture(seed: int, mode: str = "RGB") -> Image.Image:
    return Image.effect_noise((WIDTH, HEIGHT), 60 + seed).convert(mode)


def flux_parts(in_channels: int = 16, guidance: bool = False):
    parts = tiny_flux_components(seed=0)
    parts["transformer"] = tiny_flux_transformer(0, 4.0, in_channels, guidance)
    return parts


def chroma_parts():
    from diffusers import ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    model = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 2, 2),
        approximator_num_channels=8,
        approximator_hidden_dim=16,
        approximator_layers=1,
    )
    sharpen_transformer(model, 4.0)
    tokenizer = tiny_t5_tokenizer()
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(shift_factor=0.1),
        text_encoder=tiny_t5_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=model.eval(),
    )


def run_against_reference(ours, host, call, sigma, names=DEFAULT, true_cfg_scale=None, scale=3.0):
    def fresh():
        return dict(call, generator=torch.Generator().manual_seed(0), output_type="latent")

    seg_args = dict(seg_scale=scale, seg_blur_sigma=sigma)
    result = ours(**fresh(), **seg_args).images
    text = {name: TEXT for name in names if name.startswith("single")}
    with reference_seg_transformer(
        host.transformer, names, GRID, sigma, scale, False, text_tokens=text, token_dim=1, true_cfg_scale=true_cfg_scale
    ):
        reference = host(**fresh()).images
    plain = host(**fresh()).images
    assert (result - reference).abs().max() <= TOLERANCE
    assert (plain - reference).abs().max() > MIN_EFFECT
    assert no_hooks_left(ours.transformer)
    zero = ours(**fresh(), seg_scale=0.0).images
    assert torch.equal(zero, plain)


BASE = dict(prompt="a cube", height=HEIGHT, width=WIDTH, num_inference_steps=3, max_sequence_length=TEXT)


@pytest.mark.parametrize("sigma", [1.0, math.inf])
def test_flux_fill_matches_the_reference(sigma):
    from diffusers import FluxFillPipeline

    parts = flux_parts(in_channels=48, guidance=True)  # packed latents, masked-image latents and mask
    parts.pop("image_encoder"), parts.pop("feature_extractor")
    ours, host = make_pipe(seg.FluxFillSEGPipeline, parts), make_pipe(FluxFillPipeline, parts)
    run_against_reference(ours, host, dict(BASE, image=picture(0), mask_image=picture(1, "L")), sigma)


@pytest.mark.parametrize("true_cfg", [False, True], ids=["no-cfg", "true-cfg"])
@pytest.mark.parametrize("layers", ["default", "double"])
def test_flux_kontext_blurs_the_generated_image_only(true_cfg, layers):
    from diffusers import FluxKontextPipeline

    parts = flux_parts()
    ours, host = make_pipe(seg.FluxKontextSEGPipeline, parts), make_pipe(FluxKontextPipeline, parts)
    call = dict(BASE, image=picture(2), max_area=HEIGHT * WIDTH, _auto_resize=False)
    if true_cfg:
        call.update(negative_prompt="blurry", true_cfg_scale=4.0)
    names = DEFAULT if layers == "default" else ["transformer_blocks.0.attn"]
    if layers == "double":
        ours = _with_layers(ours, ["double.0"])
    run_against_reference(ours, host, call, 1.0, names, true_cfg_scale=4.0 if true_cfg else None)


def _with_layers(pipe, layers):
    """The pipeline with ``seg_applied_layers`` fixed for every call."""
    call = pipe.__call__

    class Fixed:
        transformer = pipe.transformer

        def __call__(self, **kwargs):
            return call(**kwargs, seg_applied_layers=layers)

    return Fixed()


def test_flux_img2img_true_cfg_leaves_the_uncond_call_alone():
    """Flux img2img sets no cache context: the uncond call is told apart by its repeated timestep."""
    from diffusers import FluxImg2ImgPipeline

    parts = flux_parts()
    ours, host = make_pipe(seg.FluxSEGImg2ImgPipeline, parts), make_pipe(FluxImg2ImgPipeline, parts)
    call = dict(BASE, image=picture(3), strength=0.8, negative_prompt="blurry", true_cfg_scale=4.0)
    run_against_reference(ours, host, call, 2.0, true_cfg_scale=4.0)


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("sigma", [2.0, 10000.0])
def test_chroma_matches_the_reference(cfg, sigma):
    from diffusers import ChromaPipeline

    parts = chroma_parts()
    ours, host = make_pipe(seg.ChromaSEGPipeline, parts), make_pipe(ChromaPipeline, parts)
    call = dict(BASE, negative_prompt="blurry", guidance_scale=4.0 if cfg else 1.0)
    run_against_reference(ours, host, call, sigma, true_cfg_scale=4.0 if cfg else None)


def test_chroma_img2img_matches_the_reference():
    from diffusers import ChromaImg2ImgPipeline

    parts = chroma_parts()
    ours, host = make_pipe(seg.ChromaSEGImg2ImgPipeline, parts), make_pipe(ChromaImg2ImgPipeline, parts)
    call = dict(BASE, image=picture(4), strength=0.8, guidance_scale=4.0)
    run_against_reference(ours, host, call, 1.0, true_cfg_scale=4.0)


def test_hooks_are_gone_after_an_exception_in_kontext():
    parts = flux_parts()
    ours = make_pipe(seg.FluxKontextSEGPipeline, parts)

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        ours(**dict(BASE, image=picture(2), max_area=HEIGHT * WIDTH, _auto_resize=False), callback_on_step_end=fail)
    assert no_hooks_left(ours.transformer)
