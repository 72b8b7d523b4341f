"""SEG with diffusers' cache methods (``enable_cache``): with one on, SEG's perturbed prediction is a call of its
own with a cache state of its own (its own cache context; its own state in the hooks of the caches that ignore
contexts), so it never reuses what the cache kept for the cond or uncond call and leaves their cache state as it
was; a cache that never skips gives SEG without a cache."""

from __future__ import annotations

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, TOLERANCE, make_pipe, no_hooks_left
from smoothed_energy_guidance.testing import diffusers_cache_configs, tiny_flux_components

STEPS = 4
METHODS = ["first-block-cache", "taylorseer", "pyramid-attention-broadcast", "magcache", "fastercache"]
CALL = dict(prompt="a cube", num_inference_steps=STEPS, height=32, width=32, max_sequence_length=8)


def cache_configs(pipe) -> dict:
    """Every method skipping as much as it can: First Block Cache and MagCache at a threshold nothing reaches."""
    return diffusers_cache_configs(lambda: pipe.current_timestep, STEPS, threshold=1e9, attention_timesteps=(-1, 1001))


def run(pipe, config, seeds=(0,), **seg_args) -> torch.Tensor:
    """One generation with a fresh cache (``config``; None: no cache), one image per seed."""
    if config is not None:
        pipe.transformer.enable_cache(config)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    try:
        call = dict(CALL, num_images_per_prompt=len(seeds), output_type="latent", generator=generators)
        return pipe(**call, **seg_args).images
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


@pytest.mark.parametrize("method", METHODS)
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


@pytest.mark.parametrize("method", METHODS)
def test_a_video_family_with_its_prefix_replayed_composes_with_each_cache_the_same_way(method):
    """Wan's perturbed prediction replays its prefix without a cache; with one on, it is a call of its own with
    its own cache state: SEG off is diffusers' own cached run bit for bit and SEG still moves it; a First Block
    Cache that never skips gives the same SEG as no cache."""
    from diffusers import WanPipeline
    from test_video import CALL as VIDEO_CALL
    from test_video import embeddings, wan_parts

    parts = wan_parts()
    ours, host = make_pipe(seg.WanSEGPipeline, parts), make_pipe(WanPipeline, parts)
    steps = VIDEO_CALL["num_inference_steps"]

    def video(pipe, config, **seg_args):
        if config is not None:
            pipe.transformer.enable_cache(config)
        try:
            call = dict(VIDEO_CALL, **embeddings(), guidance_scale=4.0, output_type="latent")
            return pipe(**call, generator=torch.Generator().manual_seed(0), **seg_args).frames
        finally:
            if config is not None:
                pipe.transformer.disable_cache()

    def skipping(pipe):
        configs = diffusers_cache_configs(
            lambda: pipe.current_timestep, steps, threshold=1e9, attention_timesteps=(-1, 1001)
        )
        return configs[method]

    if method == "first-block-cache":
        from diffusers import FirstBlockCacheConfig

        without = video(ours, None, seg_blur_sigma=2.0)
        never_skips = video(ours, FirstBlockCacheConfig(threshold=0.0), seg_blur_sigma=2.0)
        assert (never_skips - without).abs().max() <= 1e-5
    seg_off = video(ours, skipping(ours), seg_scale=0.0)
    assert torch.equal(seg_off, video(host, skipping(host)))
    assert (video(ours, skipping(ours), seg_blur_sigma=2.0) - seg_off).abs().max() > MIN_EFFECT
    assert no_hooks_left(ours.transformer)


@pytest.mark.parametrize("method", METHODS)
def test_with_a_cache_image_0_does_not_depend_on_image_1(method):
    """Every skip here follows a fixed schedule (thresholds nothing reaches), so the rows of one image meet only
    their own cache entries: the first image is the same whichever image is generated beside it."""
    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))
    beside_one = run(pipe, cache_configs(pipe)[method], seeds=(0, 1), seg_blur_sigma=1.0)
    beside_two = run(pipe, cache_configs(pipe)[method], seeds=(0, 2), seg_blur_sigma=1.0)
    assert (beside_one[0] - beside_two[0]).abs().max() <= 1e-5
    assert (beside_one[1] - beside_two[1]).abs().max() > MIN_EFFECT


@pytest.mark.parametrize("method", ["pyramid-attention-broadcast", "fastercache"])
def test_caches_that_ignore_contexts_keep_a_state_of_their_own_for_the_perturbed_call(method):
    """Pyramid Attention Broadcast and FasterCache keep one state per attention module for every call: SEG's
    perturbed call gets its own, so where the cache reuses attention there, what it returns is never the output
    the cond call just computed (unblurred)."""
    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))
    attention = pipe.transformer.get_submodule("single_transformer_blocks.0.attn")  # the tiny Flux's SEG layer
    outputs, computed = [], []
    handles = [
        attention.register_forward_hook(lambda m, args, output: outputs.append(output)),
        attention.to_q.register_forward_hook(lambda *_: computed.append(len(outputs))),
    ]
    try:
        run(pipe, cache_configs(pipe)[method], seg_blur_sigma=1.0)
    finally:
        for handle in handles:
            handle.remove()
    outputs = [output[0] if isinstance(output, tuple) else output for output in outputs]
    assert len(outputs) == 2 * STEPS  # each step: the host's cond call, then SEG's perturbed call
    reused = [call for call in range(1, 2 * STEPS, 2) if call not in computed]
    assert reused  # the cache skipped the SEG layer in some perturbed call
    for call in range(1, 2 * STEPS, 2):
        assert not torch.equal(outputs[call], outputs[call - 1])


def _cfg_batched_cache_configs(pipe) -> dict:
    """The caches that keep no per-context state, as a batched-CFG video pipeline uses them: FasterCache with
    its CFG shortcut on (it splits each call into [uncond, cond] halves)."""
    from diffusers import FasterCacheConfig, PyramidAttentionBroadcastConfig

    timestep = lambda: pipe.current_timestep  # noqa: E731
    return {
        "pyramid-attention-broadcast": PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=timestep,
        ),
        "fastercache": FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            unconditional_batch_skip_range=2,
            current_timestep_callback=timestep,
            tensor_format="BFCHW",
            is_guidance_distilled=False,
        ),
    }


@pytest.mark.parametrize("method", ["pyramid-attention-broadcast", "fastercache"])
def test_batched_cfg_video_with_a_cache_that_ignores_contexts(method):
    """CogVideoX batches [uncond, cond] in one call; the perturbed call of its own holds the cond rows only.
    SEG off is diffusers' own cached run bit for bit; SEG whose blur changes nothing (σ far below one token) gives
    that same run, so the host's cache state and skip schedule are untouched by the perturbed call; SEG moves it."""
    from diffusers import CogVideoXPipeline
    from test_video import CALL as VIDEO_CALL
    from test_video import cogvideox_parts, embeddings

    parts = cogvideox_parts()
    ours, host = make_pipe(seg.CogVideoXSEGPipeline, parts), make_pipe(CogVideoXPipeline, parts)

    def video(pipe, **seg_args):
        pipe.transformer.enable_cache(_cfg_batched_cache_configs(pipe)[method])
        try:
            call = dict(VIDEO_CALL, **embeddings(), guidance_scale=4.0, max_sequence_length=5, num_inference_steps=4)
            return pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(0), **seg_args).frames
        finally:
            pipe.transformer.disable_cache()

    seg_off = video(ours, seg_scale=0.0)
    assert torch.equal(seg_off, video(host))
    assert (video(ours, seg_blur_sigma=0.01) - seg_off).abs().max() <= TOLERANCE
    assert (video(ours, seg_blur_sigma=2.0) - seg_off).abs().max() > MIN_EFFECT
    assert no_hooks_left(ours.transformer)


def _modular_cache_configs(transformer, steps: int) -> tuple[dict, torch.utils.hooks.RemovableHandle]:
    """Every cache method for a modular denoise, whose pipeline has no ``current_timestep``: the timestep is read
    from the transformer's own calls (by the returned hook, to remove after the run)."""
    seen = {"timestep": 1000.0}

    def keep(module, args, kwargs):
        seen["timestep"] = float(kwargs["timestep"].flatten()[0])

    handle = transformer.register_forward_pre_hook(keep, with_kwargs=True)
    configs = diffusers_cache_configs(lambda: seen["timestep"], steps, threshold=1e9, attention_timesteps=(-1, 1001))
    return configs, handle


# (family, cache method) pairs diffusers itself runs: HunyuanVideo 1.5 has no First Block Cache / MagCache
# support in diffusers, and its modular denoise runs cond and uncond as separate calls
GUIDER_CASES = [
    *[("ltx-video", method) for method in METHODS],
    ("hunyuan-video-1.5", "taylorseer"),
    ("hunyuan-video-1.5", "pyramid-attention-broadcast"),
    ("hunyuan-video-1.5", "fastercache"),
]


@pytest.mark.parametrize("family, method", GUIDER_CASES)
def test_the_guider_composes_with_each_cache_method(family, method):
    """Modular Diffusers runs each guider batch in a cache context named after it. LTX-Video takes SEG's rows in
    its cond call (there: a perturbed call of its own, in SEG's context); HunyuanVideo 1.5 gets a perturbed batch
    of its own, which the cache may skip SEG's layers in (its estimate then stands for that step) and in which the
    caches that ignore contexts use SEG's own state. SEG off is diffusers' own guider with the cache, bit for bit,
    and SEG still moves the output."""
    from diffusers import ClassifierFreeGuidance
    from test_video import modular_hunyuan_video_15_denoise, modular_ltx_denoise

    pipe, run = modular_ltx_denoise() if family == "ltx-video" else modular_hunyuan_video_15_denoise()
    transformer = pipe.transformer
    steps = 4

    def cached(guider):
        configs, timestep_reader = _modular_cache_configs(transformer, steps)
        transformer.enable_cache(configs[method])
        try:
            return run(guider, steps=steps)
        finally:
            transformer.disable_cache()
            timestep_reader.remove()

    seg_off = cached(seg.SmoothedEnergyGuidance(guidance_scale=4.0, scale=0.0))
    assert torch.equal(seg_off, cached(ClassifierFreeGuidance(guidance_scale=4.0)))
    assert (cached(seg.SmoothedEnergyGuidance(guidance_scale=4.0, blur_sigma=2.0)) - seg_off).abs().max() > MIN_EFFECT
    assert no_hooks_left(transformer)
