"""SEG with diffusers' cache methods (``enable_cache``): with one on, SEG's perturbed prediction is a call of its
own in a cache context of its own, so it never reuses what the cache kept for the cond or uncond call and
leaves their cache state as it was; a cache that never skips gives SEG without a cache."""

from __future__ import annotations

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import diffusers_cache_configs, tiny_flux_components

STEPS = 4
CALL = dict(prompt="a cube", num_inference_steps=STEPS, height=32, width=32, max_sequence_length=8)


def cache_configs(pipe) -> dict:
    """Every method skipping as much as it can: First Block Cache and MagCache at a threshold nothing reaches."""
    return diffusers_cache_configs(lambda: pipe.current_timestep, STEPS, threshold=1e9, attention_timesteps=(-1, 1001))


def run(pipe, config, **seg_args) -> torch.Tensor:
    """One generation with a fresh cache (``config``; None: no cache)."""
    if config is not None:
        pipe.transformer.enable_cache(config)
    try:
        return pipe(**CALL, output_type="latent", generator=torch.Generator().manual_seed(0), **seg_args).images
    finally:
        if config is not None:
            pipe.transformer.disable_cache()


def test_a_cache_that_never_skips_gives_seg_without_a_cache():
    from diffusers import FirstBlockCacheConfig

    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))
    without = run(pipe, None, seg_blur_sigma=1.0)
    with_cache = run(pipe, FirstBlockCacheConfig(threshold=0.0), seg_blur_sigma=1.0)
    assert (with_cache - without).abs().max() <= 1e-5
    assert (without - run(pipe, None, seg_scale=0.0)).abs().max() > MIN_EFFECT


@pytest.mark.parametrize(
    "method", ["first-block-cache", "taylorseer", "pyramid-attention-broadcast", "magcache", "fastercache"]
)
def test_seg_runs_with_each_cache_method_and_leaves_the_cached_run_alone_when_off(method):
    from diffusers import FluxPipeline

    parts = tiny_flux_components(seed=0)
    ours, host = make_pipe(seg.FluxSEGPipeline, parts), make_pipe(FluxPipeline, parts)
    seg_on = run(ours, cache_configs(ours)[method], seg_blur_sigma=1.0)
    seg_off = run(ours, cache_configs(ours)[method], seg_scale=0.0)
    diffusers_cached = run(host, cache_configs(host)[method])
    assert torch.equal(seg_off, diffusers_cached)  # SEG off: diffusers' own cached result, bit for bit
    assert (seg_on - seg_off).abs().max() > MIN_EFFECT  # SEG still moves the output
    assert no_hooks_left(ours.transformer)


def test_a_video_family_with_its_prefix_replayed_composes_with_a_cache_the_same_way():
    """Wan's perturbed prediction replays its prefix without a cache; with one on, it is a call of its own in
    its own cache context: a never-skipping cache gives the same SEG, a skipping one leaves SEG off untouched."""
    from diffusers import FirstBlockCacheConfig, WanPipeline
    from test_video import CALL as VIDEO_CALL
    from test_video import embeddings, wan_parts

    parts = wan_parts()
    ours, host = make_pipe(seg.WanSEGPipeline, parts), make_pipe(WanPipeline, parts)

    def video(pipe, config, **seg_args):
        if config is not None:
            pipe.transformer.enable_cache(config)
        try:
            call = dict(VIDEO_CALL, **embeddings(), guidance_scale=4.0, output_type="latent")
            return pipe(**call, generator=torch.Generator().manual_seed(0), **seg_args).frames
        finally:
            if config is not None:
                pipe.transformer.disable_cache()

    without = video(ours, None, seg_blur_sigma=2.0)
    assert (video(ours, FirstBlockCacheConfig(threshold=0.0), seg_blur_sigma=2.0) - without).abs().max() <= 1e-5
    skipping = FirstBlockCacheConfig(threshold=1e9)
    seg_off = video(ours, skipping, seg_scale=0.0)
    assert torch.equal(seg_off, video(host, FirstBlockCacheConfig(threshold=1e9)))
    assert (video(ours, skipping, seg_blur_sigma=2.0) - seg_off).abs().max() > MIN_EFFECT
    assert no_hooks_left(ours.transformer)
