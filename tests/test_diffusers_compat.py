"""SEG classes behave like diffusers pipelines: signatures, fuse / unfuse QKV, distilled UNets, scale 0."""

from __future__ import annotations

import inspect

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, assert_matches_reference, latents, layer_names, make_pipe
from smoothed_energy_guidance.pipelines.registry import SEG_CLASSES
from smoothed_energy_guidance.testing import (
    tiny_flux_components,
    tiny_sd3_components,
    tiny_sd_components,
    tiny_sdxl_components,
)

SEG_ARGUMENTS = [
    "seg_scale",
    "seg_blur_sigma",
    "seg_applied_layers",
    "seg_applied_layers_index",
    "seg_guidance_start",
    "seg_guidance_end",
    "seg_temporal_sigma",
]


@pytest.mark.parametrize("host, seg_class", list(SEG_CLASSES.items()), ids=lambda c: getattr(c, "__name__", ""))
def test_signature_is_the_hosts_plus_seg_arguments(host, seg_class):
    host_params = inspect.signature(host.__call__).parameters
    ours = inspect.signature(seg_class.__call__).parameters
    host_names = [name for name, p in host_params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    ours_names = list(ours)
    assert ours_names[: len(host_names)] == host_names
    assert ours_names[len(host_names) : len(host_names) + len(SEG_ARGUMENTS)] == SEG_ARGUMENTS
    for name in host_names:  # defaults and kinds are the host's own
        assert ours[name].default is host_params[name].default or ours[name].default == host_params[name].default
        assert ours[name].kind == host_params[name].kind
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in SEG_ARGUMENTS)
    doc = seg_class.__call__.__doc__
    assert doc.startswith(inspect.getdoc(host.__call__)[:200]) and "seg_blur_sigma" in doc


def test_signature_readers_find_host_arguments_on_instances(components):
    pipe = make_pipe(seg.StableDiffusionXLSEGPipeline, components)
    params = inspect.signature(pipe.__call__).parameters
    assert "self" not in params
    assert {"prompt", "callback_on_step_end", "num_images_per_prompt", "ip_adapter_image", "seg_scale"} <= set(params)
    # diffusers' LoRA test helpers look for the attention-kwargs argument by name
    assert "joint_attention_kwargs" in inspect.signature(seg.FluxSEGPipeline.__call__).parameters
    assert "joint_attention_kwargs" in inspect.signature(seg.StableDiffusion3SEGPipeline.__call__).parameters


def test_subclass_with_its_own_call_keeps_it():
    class Mine(seg.StableDiffusionXLSEGPipeline):
        def __call__(self, prompt: str, **kwargs):  # noqa: D401
            return prompt

    assert list(inspect.signature(Mine.__call__).parameters) == ["self", "prompt", "kwargs"]


def _fuse_unfuse_case(family):
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        parts, cls = tiny_sdxl_components(seed=4), seg.StableDiffusionXLSEGPipeline
        call = dict(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), guidance_scale=5.0)
        return parts, cls, StableDiffusionXLPipeline, call
    if family == "sd":
        parts, cls = tiny_sd_components(seed=4), seg.StableDiffusionSEGPipeline
        call = dict(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), guidance_scale=5.0)
        return parts, cls, StableDiffusionPipeline, call
    parts, cls = tiny_sd3_components(seed=4, qk_norm=None), seg.StableDiffusion3SEGPipeline
    call = dict(prompt="a cube", num_inference_steps=3, height=32, width=48, guidance_scale=5.0, max_sequence_length=16)
    return parts, cls, StableDiffusion3Pipeline, call


def _fusing(pipe):
    """The object that offers fuse / unfuse: the pipeline, or (SD3) its transformer."""
    return pipe if hasattr(pipe, "fuse_qkv_projections") else pipe.transformer


def _run(pipe, call, **seg_args):
    return pipe(**call, generator=torch.Generator().manual_seed(1), output_type="latent", **seg_args).images


@pytest.mark.parametrize("family", ["sdxl", "sd", "sd3"])
def test_fuse_run_unfuse_run_equals_a_fresh_seg_pipeline(family):
    parts, cls, host_cls, call = _fuse_unfuse_case(family)
    seg_args = dict(seg_scale=3.0, seg_blur_sigma=1.0)
    fresh = _run(make_pipe(cls, parts), call, **seg_args)
    plain = _run(make_pipe(host_cls, parts), call)
    assert (fresh - plain).abs().max() > MIN_EFFECT

    pipe = make_pipe(cls, parts)
    _fusing(pipe).fuse_qkv_projections()
    fused = _run(pipe, call, **seg_args)
    _fusing(pipe).unfuse_qkv_projections()
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    stale = [m for m in denoiser.modules() if getattr(m, "fused_projections", False)]
    assert stale, "diffusers' unfuse leaves fused_projections=True behind; this test needs that state"
    assert torch.equal(_run(pipe, call, seg_scale=0.0), plain)
    unfused = _run(pipe, call, **seg_args)
    assert (fused - fresh).abs().max() <= TOLERANCE
    assert (unfused - fresh).abs().max() <= TOLERANCE


def test_fused_qkv_on_flux_equals_unfused():
    parts = tiny_flux_components(seed=2)
    call = dict(prompt="a cube", num_inference_steps=3, height=32, width=48, guidance_scale=1.0, max_sequence_length=16)
    pipe = make_pipe(seg.FluxSEGPipeline, parts)
    seg_args = dict(seg_scale=3.0, seg_blur_sigma=1.0, seg_applied_layers=["double.0", "single.1"])
    unfused = _run(pipe, call, **seg_args)
    _fusing(pipe).fuse_qkv_projections()
    assert pipe.transformer.transformer_blocks[0].attn.fused_projections
    fused = _run(pipe, call, **seg_args)
    _fusing(pipe).unfuse_qkv_projections()
    assert (fused - unfused).abs().max() <= TOLERANCE
    assert (unfused - _run(pipe, call, seg_scale=0.0)).abs().max() > MIN_EFFECT


def test_fusing_after_enabling_is_refused_with_the_fix():
    from diffusers import StableDiffusionXLPipeline

    parts = tiny_sdxl_components(seed=4)
    pipe = make_pipe(StableDiffusionXLPipeline, parts)
    call = dict(prompt="a cube", num_inference_steps=2, latents=latents(1, 16, 16))
    with seg.enable_seg(pipe, blur_sigma=1.0):
        pipe.fuse_qkv_projections()
        with pytest.raises(RuntimeError, match="changed after SEG was enabled"):
            _run(pipe, call)
        pipe.unfuse_qkv_projections()
        _run(pipe, call)  # back to what was enabled: runs


@pytest.fixture(scope="module")
def ssd_parts():
    """SSD-1B's distilled layout: the mid block has no attention."""
    return tiny_sdxl_components(seed=6, mid_block_type="UNetMidBlock2D")


def test_distilled_unet_without_mid_attention_runs_plain_at_scale_zero(ssd_parts):
    from diffusers import StableDiffusionXLPipeline

    call = dict(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), guidance_scale=5.0)
    plain = _run(make_pipe(StableDiffusionXLPipeline, ssd_parts), call)
    ours = make_pipe(seg.StableDiffusionXLSEGPipeline, ssd_parts)
    assert torch.equal(_run(ours, call, seg_scale=0.0), plain)
    # scale 0 accepts what SEG itself could not run
    assert torch.equal(_run(ours, call, seg_scale=0.0, seg_applied_layers=["mid"]), plain)
    with seg.enable_seg(ours, scale=0.0, layers=["no-such-layer"]) as handle:
        assert not handle.attached
        assert torch.equal(_run(make_pipe(StableDiffusionXLPipeline, ssd_parts), call), plain)


def test_distilled_unet_defaults_to_its_lowest_resolution_self_attentions(ssd_parts):
    from diffusers import StableDiffusionXLPipeline

    ours = make_pipe(seg.StableDiffusionXLSEGPipeline, ssd_parts)
    host = make_pipe(StableDiffusionXLPipeline, ssd_parts)
    deepest = layer_names(host.unet, "down_blocks.1") + layer_names(host.unet, "up_blocks.0")
    assert len(deepest) == 10
    assert_matches_reference(
        ours,
        host,
        deepest,
        dict(seg_scale=3.0, seg_blur_sigma=1.0),
        lambda: dict(
            prompt="a cube",
            num_inference_steps=3,
            latents=latents(1, 16, 16),
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        ),
        1.0,
        True,
    )
    with pytest.raises(ValueError, match="'mid' has no self-attention.*valid layers: 'down'"):
        _run(ours, dict(prompt="a cube", num_inference_steps=2), seg_applied_layers=["mid"])
