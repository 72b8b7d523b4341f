"""SEG acts only on its own pipeline's calls: from_pipe siblings, threads, stacking, PAG, empty layers."""

from __future__ import annotations

import threading

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, latents, make_pipe
from smoothed_energy_guidance.testing import tiny_sd3_components


def run(pipe, guidance_scale=5.0, steps=3, **extra):
    return pipe(
        "a cube",
        num_inference_steps=steps,
        latents=latents(1, 16, 16),
        guidance_scale=guidance_scale,
        output_type="latent",
        **extra,
    ).images


def sibling(pipe, cls=None):
    """A plain SDXL pipeline sharing every component with ``pipe`` (diffusers' from_pipe)."""
    from diffusers import StableDiffusionXLPipeline

    other = (cls or StableDiffusionXLPipeline).from_pipe(pipe)
    other.set_progress_bar_config(disable=True)
    return other


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_a_persistent_handle_does_not_reach_sibling_pipelines(plain_pipe, guidance_scale):
    a = plain_pipe
    b = sibling(a)
    expected_b = run(b, guidance_scale=7.0 if guidance_scale > 1 else 1.0)
    plain_a = run(a, guidance_scale)
    handle = seg.enable_seg(a, blur_sigma=1.0)
    try:
        assert torch.equal(run(b, guidance_scale=7.0 if guidance_scale > 1 else 1.0), expected_b)
        assert (run(a, guidance_scale) - plain_a).abs().max() > MIN_EFFECT
    finally:
        handle.remove()


def test_seg_class_call_leaves_a_sibling_plain_and_vice_versa(seg_pipe):
    plain = sibling(seg_pipe)
    expected_plain = run(plain)
    seg_result = run(seg_pipe, seg_blur_sigma=1.0)
    # a SEG sibling made from the plain one computes the same SEG, and the plain one stays plain
    again = seg.from_pipe(plain)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(run(again, seg_blur_sigma=1.0), seg_result)
    assert torch.equal(run(plain), expected_plain)


def test_concurrent_calls_on_pipelines_sharing_a_unet_never_mix(seg_pipe):
    from diffusers import EulerDiscreteScheduler

    plain = sibling(seg_pipe)
    plain.scheduler = EulerDiscreteScheduler.from_config(seg_pipe.scheduler.config)  # schedulers hold loop state
    other_seg = seg.from_pipe(seg_pipe, scheduler=EulerDiscreteScheduler.from_config(seg_pipe.scheduler.config))
    other_seg.set_progress_bar_config(disable=True)
    # the tokenizers are shared too and are not thread-safe in transformers: encode up front
    embeds = dict(
        zip(
            ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
            seg_pipe.encode_prompt("a cube", device="cpu"),
            strict=True,
        )
    )

    def embedded(pipe, **extra):
        return pipe(
            num_inference_steps=8,
            latents=latents(1, 16, 16),
            guidance_scale=5.0,
            output_type="latent",
            **embeds,
            **extra,
        ).images

    jobs = {
        "seg": lambda: embedded(seg_pipe, seg_blur_sigma=1.0),
        "plain": lambda: embedded(plain),
        "other-seg": lambda: embedded(other_seg, seg_blur_sigma=4.0, seg_applied_layers=["up"]),
    }
    alone = {name: job() for name, job in jobs.items()}
    results: dict[str, list[torch.Tensor]] = {name: [] for name in jobs}
    errors: list[BaseException] = []

    def worker(name):
        try:
            for _ in range(3):
                results[name].append(jobs[name]())
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name in jobs:
        assert all(torch.equal(result, alone[name]) for result in results[name]), name
    assert (alone["seg"] - alone["plain"]).abs().max() > MIN_EFFECT


def test_enabling_twice_on_one_pipeline_is_refused_naming_the_handle(plain_pipe):
    with seg.enable_seg(plain_pipe, blur_sigma=1.0) as first:
        with pytest.raises(RuntimeError, match=r"already enabled .* by <SegHooks .*remove that handle"):
            seg.enable_seg(plain_pipe, blur_sigma=2.0)
        assert first.attached
    with seg.enable_seg(plain_pipe, blur_sigma=2.0):  # after removal it works again
        pass


def test_seg_class_called_with_an_active_handle_is_refused(seg_pipe):
    plain_result = run(seg_pipe, seg_scale=0.0)
    with seg.enable_seg(seg_pipe, blur_sigma=1.0):
        with pytest.raises(RuntimeError, match="already enabled"):
            run(seg_pipe, seg_blur_sigma=2.0)
        handle_result = run(seg_pipe, seg_scale=0.0)  # scale 0 adds nothing: the handle's SEG runs
    assert (handle_result - plain_result).abs().max() > MIN_EFFECT
    assert torch.equal(run(seg_pipe, seg_blur_sigma=1.0), handle_result)


def test_handles_on_two_sibling_pipelines_each_act_on_their_own_calls(plain_pipe):
    from diffusers import EulerDiscreteScheduler

    other = sibling(plain_pipe)
    other.scheduler = EulerDiscreteScheduler.from_config(plain_pipe.scheduler.config)
    with seg.enable_seg(plain_pipe, blur_sigma=1.0):
        a_alone = run(plain_pipe)
    with seg.enable_seg(other, blur_sigma=8.0, layers=["up"]):
        b_alone = run(other)
    with seg.enable_seg(plain_pipe, blur_sigma=1.0), seg.enable_seg(other, blur_sigma=8.0, layers=["up"]):
        assert torch.equal(run(plain_pipe), a_alone)
        assert torch.equal(run(other), b_alone)


def test_pag_pipelines_are_refused_when_seg_is_enabled(components):
    from diffusers import StableDiffusionXLPAGPipeline

    pag = make_pipe(StableDiffusionXLPAGPipeline, components, pag_applied_layers=["mid"])
    with pytest.raises(ValueError, match="Perturbed-Attention Guidance.*StableDiffusionXLPipeline.from_pipe"):
        seg.enable_seg(pag, blur_sigma=1.0)
    assert not any(m._forward_pre_hooks for m in pag.unet.modules())
    with seg.enable_seg(pag, scale=0.0):  # scale 0 is the plain PAG pipeline
        run(pag, pag_scale=3.0)


def test_an_empty_layer_list_is_an_error_naming_valid_layers_in_every_family(seg_pipe):
    with pytest.raises(ValueError, match=r"No SEG layers given.*'down' \(d0-d3\), 'mid' \(m0-m1\)"):
        run(seg_pipe, seg_applied_layers=[])
    with pytest.raises(ValueError, match=r"No SEG layers given.*'mid'"):
        run(seg_pipe, seg_applied_layers_index=[])
    sd3 = make_pipe(seg.StableDiffusion3SEGPipeline, tiny_sd3_components(seed=0))
    with pytest.raises(ValueError, match=r"No SEG layers given.*'blocks' \(blocks.0-blocks.2\)"):
        sd3("a cube", num_inference_steps=2, height=32, width=32, output_type="latent", seg_applied_layers=[])
