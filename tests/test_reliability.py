"""Hook lifecycle, zero-cost off paths, the guidance window, loading and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import latents, make_pipe, no_hooks_left


def call_args(**extra):
    base = dict(
        prompt="a cube", num_inference_steps=4, output_type="latent", latents=latents(1, 16, 16), guidance_scale=5.0
    )
    return {**base, **extra}


def count_batches(unet):
    """Batch sizes reaching the UNet's last layer (after any rows SEG appends, shared prefix or not)."""
    seen: list[int] = []
    handle = unet.conv_out.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen, handle


def test_seg_scale_zero_is_the_plain_pipeline_bit_for_bit(seg_pipe, plain_pipe):
    seen, handle = count_batches(seg_pipe.unet)
    try:
        ours = seg_pipe(**call_args(), seg_scale=0.0).images
    finally:
        handle.remove()
    assert torch.equal(ours, plain_pipe(**call_args()).images)
    assert seen == [2, 2, 2, 2]


def test_no_extra_rows_outside_the_window(seg_pipe):
    seen, handle = count_batches(seg_pipe.unet)
    try:
        seg_pipe(**call_args(), seg_guidance_start=0.25, seg_guidance_end=0.75)
        seg_pipe(**call_args(guidance_scale=1.0), seg_guidance_end=0.5)
    finally:
        handle.remove()
    assert seen == [2, 3, 3, 2] + [2, 2, 1, 1]


def test_img2img_window_counts_the_steps_actually_run(components):
    from PIL import Image

    from smoothed_energy_guidance import StableDiffusionXLSEGImg2ImgPipeline

    pipe = make_pipe(StableDiffusionXLSEGImg2ImgPipeline, components)
    seen, handle = count_batches(pipe.unet)
    try:  # strength 0.5 of 8 steps runs the last 4; SEG on the first half of those
        pipe(
            "a cube",
            image=Image.new("RGB", (32, 32)),
            strength=0.5,
            num_inference_steps=8,
            output_type="latent",
            seg_guidance_end=0.5,
        )
    finally:
        handle.remove()
    assert seen == [3, 3, 2, 2]


def test_window_matches_reference_on_the_active_steps(seg_pipe, plain_pipe):
    from conftest import TOLERANCE, layer_names
    from reference import reference_seg

    ours = seg_pipe(**call_args(), seg_blur_sigma=1.0, seg_guidance_start=0.5).images
    with reference_seg(
        plain_pipe.unet, layer_names(plain_pipe.unet, "mid_block"), 1.0, 3.0, 5.0, True, active_calls={2, 3}
    ):
        reference = plain_pipe(**call_args()).images
    assert (ours - reference).abs().max() <= TOLERANCE


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_no_hook_remains_after_an_exception_in_a_callback(seg_pipe, plain_pipe, error):
    before = plain_pipe(**call_args()).images
    processors = dict(seg_pipe.unet.attn_processors)

    def fail(pipe, step, timestep, kwargs):
        if step == 1:
            raise error()
        return kwargs

    with pytest.raises(error):
        seg_pipe(**call_args(), callback_on_step_end=fail)
    assert no_hooks_left(seg_pipe.unet)
    assert seg_pipe.unet.attn_processors == processors
    assert torch.equal(plain_pipe(**call_args()).images, before)


def test_return_dict_false_and_user_processors_are_kept(seg_pipe, plain_pipe):
    from diffusers.models.attention_processor import AttnProcessor

    from conftest import TOLERANCE, layer_names
    from reference import reference_seg

    user_processor = AttnProcessor()
    seg_pipe.unet.set_attn_processor(user_processor)
    try:
        before = dict(seg_pipe.unet.attn_processors)
        (ours,) = seg_pipe(**call_args(), seg_blur_sigma=2.0, return_dict=False)
        assert no_hooks_left(seg_pipe.unet)
        assert seg_pipe.unet.attn_processors == before
        assert all(p is user_processor for p in seg_pipe.unet.attn_processors.values())
        with reference_seg(plain_pipe.unet, layer_names(plain_pipe.unet, "mid_block"), 2.0, 3.0, 5.0, True):
            reference = plain_pipe(**call_args()).images
        assert (ours - reference).abs().max() <= TOLERANCE
    finally:
        from diffusers.models.attention_processor import AttnProcessor2_0

        seg_pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_enable_seg_handle_is_a_context_manager_with_idempotent_remove(seg_pipe, plain_pipe):
    expected = seg_pipe(**call_args(), seg_blur_sigma=4.0).images
    baseline = plain_pipe(**call_args()).images
    with seg.enable_seg(plain_pipe, scale=3.0, blur_sigma=4.0, layers=["mid"]) as handle:
        assert torch.equal(plain_pipe(**call_args()).images, expected)
    assert not handle.attached and no_hooks_left(plain_pipe.unet)
    handle.remove()
    handle.remove()
    assert torch.equal(plain_pipe(**call_args()).images, baseline)
    handle = seg.enable_seg(plain_pipe, blur_sigma=4.0)
    handle.remove()
    assert no_hooks_left(plain_pipe.unet)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seg_applied_layers=["m7"]), r"out of range: 'mid' has 2 .*m0-m1"),
        (dict(seg_applied_layers=["blocks.1"]), r"Unknown layer 'blocks.1'. Valid layers: 'down' \(d0-d3\)"),
        (dict(seg_blur_sigma=0.0), r"seg_blur_sigma must be > 0"),
        (dict(seg_blur_sigma=math.nan), r"seg_blur_sigma must be > 0"),
        (dict(seg_scale=math.inf), r"seg_scale must be a finite number"),
        (dict(seg_guidance_start=0.6, seg_guidance_end=0.4), r"must be below seg_guidance_end"),
        (dict(seg_guidance_end=2.0), r"in \[0, 1\]"),
    ],
)
def test_bad_input_names_the_fix(seg_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        seg_pipe(**call_args(), **kwargs)
    assert no_hooks_left(seg_pipe.unet)


def test_pipeline_without_unet_is_refused():
    with pytest.raises(
        ValueError,
        match=r"SEG supports Stable Diffusion 1.x/2.x, Stable Diffusion XL, Kolors, .*, and video: Wan, .*Mochi",
    ):
        seg.enable_seg(object())


def test_from_pretrained_and_from_pipe(tmp_path, plain_pipe, seg_pipe):
    plain_pipe.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    loaded = seg.StableDiffusionXLSEGPipeline.from_pretrained(tmp_path / "tiny")
    loaded.set_progress_bar_config(disable=True)
    expected = seg_pipe(**call_args(), seg_blur_sigma=1.0).images
    assert torch.equal(loaded(**call_args(), seg_blur_sigma=1.0).images, expected)
    from_pipe = seg.StableDiffusionXLSEGPipeline.from_pipe(plain_pipe)
    assert from_pipe.unet is plain_pipe.unet
    assert torch.equal(from_pipe(**call_args(), seg_blur_sigma=1.0).images, expected)


def test_the_official_example_runs_unchanged(seg_pipe):
    pipe = seg_pipe
    prompts = ["a photo of a cat", "a photo of a dog"]
    g = torch.Generator().manual_seed(0)
    images = pipe(
        prompts,
        num_inference_steps=25,
        guidance_scale=1.0,
        seg_scale=3.0,
        seg_blur_sigma=100.0,
        seg_applied_layers=["mid"],
        generator=g,
    ).images
    assert len(images) == 2 and images[0].size == (32, 32)


def test_from_single_file_with_a_local_config(tmp_path, plain_pipe, seg_pipe):
    from ldm_checkpoint import sdxl_to_ldm
    from safetensors.torch import save_file

    plain_pipe.save_pretrained(tmp_path / "config", safe_serialization=True)
    save_file(sdxl_to_ldm(plain_pipe), tmp_path / "model.safetensors")
    loaded = seg.StableDiffusionXLSEGPipeline.from_single_file(
        tmp_path / "model.safetensors", config=str(tmp_path / "config")
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(plain_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) for k in ours), name
    loaded.set_progress_bar_config(disable=True)
    expected = seg_pipe(**call_args(), seg_blur_sigma=1.0).images
    assert torch.equal(loaded(**call_args(), seg_blur_sigma=1.0).images, expected)


def test_a_skipped_seg_layer_is_named_with_its_cause():
    """Another hook skips the block holding SEG's layer (diffusers' layer skip, as skip-layer guidance uses): the
    error says that something skipped or replaced the block, not that QKV was fused or a LoRA loaded (the
    projection check reports those itself). Caches are not a cause any more: they compose (test_caches.py)."""
    from diffusers.hooks import LayerSkipConfig, apply_layer_skip

    from smoothed_energy_guidance.testing import tiny_flux_components

    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))
    apply_layer_skip(pipe.transformer, LayerSkipConfig(indices=[0], fqn="single_transformer_blocks"))
    call = dict(prompt="a cube", num_inference_steps=2, height=32, width=32, max_sequence_length=8)
    with pytest.raises(RuntimeError, match="something skipped or replaced the blocks holding them") as raised:
        pipe(**call, output_type="latent", seg_blur_sigma=1.0)
    assert "fused QKV" not in str(raised.value)
    assert no_hooks_left(pipe.transformer)
