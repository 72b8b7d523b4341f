"""The engine is told what it serves: only calls started by an entry point get SEG.

While a handle is active, every other caller of the shared denoiser — a plain function, another thread, a
sibling ``from_pipe`` pipeline, a modular pipeline sharing the UNet — gets exactly the plain model's output,
before and after the armed pipeline has run.
"""

from __future__ import annotations

import threading

import torch
from diffusers import ClassifierFreeGuidance

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, latents


def direct_unet_call(unet) -> torch.Tensor:
    """A plain call of the tiny SDXL UNet, as another library or a user function would make it."""
    config = unet.config
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(2, config.in_channels, 16, 16, generator=g)
    text = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    with torch.no_grad():
        return unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample


def run(pipe, **extra):
    return pipe(
        "a cube", num_inference_steps=2, latents=latents(1, 16, 16), guidance_scale=5.0, output_type="latent", **extra
    ).images


def in_thread(job):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", job()))
    thread.start()
    thread.join()
    return result["value"]


def test_foreign_callers_are_plain_while_a_handle_is_active(plain_pipe):
    from diffusers import StableDiffusionXLPipeline

    unet = plain_pipe.unet
    expected = direct_unet_call(unet)
    sibling = StableDiffusionXLPipeline.from_pipe(plain_pipe)
    sibling.set_progress_bar_config(disable=True)
    sibling_plain = run(sibling)
    plain_result = run(plain_pipe)
    with seg.enable_seg(plain_pipe, blur_sigma=1.0):
        for moment in ("before", "after"):
            assert torch.equal(direct_unet_call(unet), expected), moment
            assert torch.equal(in_thread(lambda: direct_unet_call(unet)), expected), moment
            assert torch.equal(run(sibling), sibling_plain), moment
            if moment == "before":
                armed_result = run(plain_pipe)
                assert (armed_result - plain_result).abs().max() > MIN_EFFECT
    assert type(plain_pipe) is StableDiffusionXLPipeline  # the handle gave the pipeline its class back
    assert torch.equal(run(plain_pipe), plain_result)


def test_a_modular_pipeline_sharing_the_unet_is_plain_while_a_handle_is_active(components, plain_pipe):
    from diffusers import ComponentsManager  # noqa: F401 - modular pipelines are available
    from test_guider import modular

    parts = {name: value for name, value in components.items() if name != "scheduler"}
    parts["scheduler"] = components["scheduler"]
    cfg = modular("StableDiffusionXLAutoBlocks", parts, ClassifierFreeGuidance(guidance_scale=5.0))
    plain = cfg(prompt="a cube", num_inference_steps=2, latents=latents(1, 16, 16), output="latents")
    with seg.enable_seg(plain_pipe, blur_sigma=1.0):
        run(plain_pipe)
        shared = cfg(prompt="a cube", num_inference_steps=2, latents=latents(1, 16, 16), output="latents")
    assert torch.equal(shared, plain)


def test_an_armed_pipeline_keeps_its_name_signature_and_siblings(plain_pipe):
    import inspect

    cls = type(plain_pipe)
    signature = inspect.signature(plain_pipe.__call__)
    with seg.enable_seg(plain_pipe, blur_sigma=1.0):
        assert type(plain_pipe).__name__ == cls.__name__ and isinstance(plain_pipe, cls)
        assert inspect.signature(plain_pipe.__call__) == signature
        assert type(seg.from_pipe(plain_pipe)) is seg.StableDiffusionXLSEGPipeline
    assert type(plain_pipe) is cls


def test_the_guider_acts_only_inside_the_call_it_prepared(components):
    unet = components["unet"]
    expected = direct_unet_call(unet)
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
    guider.prepare_inputs({"prompt_embeds": (torch.zeros(1), torch.zeros(1))})
    guider.prepare_models(unet)  # the cond call is prepared: the hooks are on
    try:
        assert torch.equal(in_thread(lambda: direct_unet_call(unet)), expected)  # another thread: plain
    finally:
        guider.cleanup_models(unet)
    assert torch.equal(direct_unet_call(unet), expected)


def test_hooks_are_named_single_purpose_units_chosen_by_the_entry_point(plain_pipe, components):
    """A pipeline's handle combines predictions; a guider's hands the perturbed one over and ends with its call."""
    from smoothed_energy_guidance.hooks import APPEND_ROWS, END_OF_CALL, OUTPUT

    with seg.enable_seg(plain_pipe, blur_sigma=1.0, layers=["mid"]) as handle:
        names = handle.hook_names
        assert names[0] == APPEND_ROWS and names[-1] == OUTPUT and END_OF_CALL not in names
        assert [name for name in names if name.startswith("blur queries of ")] == [
            f"blur queries of mid_block.attentions.0.transformer_blocks.{index}.attn1" for index in (0, 1)
        ]
    assert handle.hook_names == ()

    unet = components["unet"]
    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=1.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(500))
    guider.prepare_inputs({"prompt_embeds": (torch.zeros(1), torch.zeros(1))})
    guider.prepare_models(unet)
    try:
        (per_call,) = seg.hooks.active_seg_hooks(unet)
        assert per_call.hook_names[-2:] == (OUTPUT, END_OF_CALL)
        direct_unet_call(unet)  # the one call it serves
    finally:
        guider.cleanup_models(unet)
    assert per_call.hook_names == () and not seg.hooks.active_seg_hooks(unet)
