"""The shared-prefix fork: exact against the repeated pass, really shared, and torch.compile friendly."""

from __future__ import annotations

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import latents, make_pipe
from smoothed_energy_guidance.testing import sharpen_self_attention, tiny_controlnet, tiny_sdxl_unet

SHARED_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def two_level_components(components):
    """Self-attention at full and half resolution, so forks can sit in the down, mid or up blocks."""
    torch.manual_seed(2)
    unet = tiny_sdxl_unet(down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
    sharpen_self_attention(unet, 4.0)
    return {**components, "unet": unet.eval()}


def rows_seen(module):
    seen: list[int] = []
    return seen, module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))


def shared_and_repeated(pipe, call, layers, sigma=2.0):
    """Run SEG with and without the shared prefix; compare every SEG prediction the host received."""
    outputs, predictions, first_rows = {}, {}, {}
    for share in (True, False):
        seen, handle = rows_seen(pipe.unet.conv_in)
        predictions[share] = []
        try:
            with seg.enable_seg(pipe, blur_sigma=sigma, layers=layers, share_prefix=share):
                # registered after SEG's hooks, so it sees the combined prediction
                capture = pipe.unet.register_forward_hook(lambda m, a, out, p=predictions[share]: p.append(out[0]))
                outputs[share] = pipe(**call).images
                capture.remove()
        finally:
            handle.remove()
        first_rows[share] = seen
    plain = pipe(**call).images
    assert (outputs[True] - plain).abs().max() > 1e-2, "SEG did not change the output"
    for shared, repeated in zip(predictions[True], predictions[False], strict=True):
        assert (shared - repeated).abs().max() <= SHARED_TOLERANCE
    # the final latents (magnitude ~4, after the scheduler's σ-scaled steps) agree as closely
    assert (outputs[True] - outputs[False]).abs().max() <= 10 * SHARED_TOLERANCE
    return first_rows


@pytest.mark.parametrize("layers", [["down"], ["d2"], ["mid"], ["up"], ["u5", "d3"], ["u0"]])
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
def test_shared_prefix_equals_the_repeated_pass(two_level_components, layers, cfg):
    from diffusers import StableDiffusionXLPipeline

    pipe = make_pipe(StableDiffusionXLPipeline, two_level_components)
    call = dict(
        prompt="a cube",
        num_inference_steps=3,
        output_type="latent",
        latents=latents(1, 12, 20),
        guidance_scale=5.0 if cfg else 1.0,
    )
    first_rows = shared_and_repeated(pipe, call, layers)
    host_rows = 2 if cfg else 1
    assert first_rows[True] == [host_rows] * 3, "the shared prefix ran on the perturbed rows too"
    assert first_rows[False] == [host_rows + 1] * 3


@pytest.mark.parametrize("layers", [["down"], ["mid"], ["up"]])
@pytest.mark.parametrize("variant", ["single", "multi", "guess-mode"])
def test_shared_prefix_with_controlnet_residuals(two_level_components, layers, variant):
    from diffusers import StableDiffusionXLControlNetPipeline
    from PIL import Image

    unet = two_level_components["unet"]
    controlnet = tiny_controlnet(unet, seed=3)
    if variant == "multi":
        controlnet = [controlnet, tiny_controlnet(unet, seed=4)]
    pipe = make_pipe(StableDiffusionXLControlNetPipeline, two_level_components, controlnet=controlnet)
    image = Image.effect_noise((24, 40), 60).convert("RGB")
    call = dict(
        prompt="a cube",
        num_inference_steps=3,
        output_type="latent",
        latents=latents(1, 12, 20),
        image=[image, image] if variant == "multi" else image,
        guess_mode=variant == "guess-mode",
        height=24,
        width=40,
    )
    shared_and_repeated(pipe, call, layers)


def test_compiled_unet_runs_seg_without_recompiling_after_warm_up(components):
    """Dynamo-level check (the 'eager' backend): the hooks trace, and steps reuse the graphs."""
    from diffusers import StableDiffusionXLPipeline
    from torch._dynamo.utils import counters

    pipe = make_pipe(StableDiffusionXLPipeline, {**components, "unet": tiny_sdxl_unet().eval()})
    call = dict(
        prompt="a cube", num_inference_steps=4, output_type="latent", latents=latents(1, 16, 16), guidance_scale=5.0
    )
    with seg.enable_seg(pipe, blur_sigma=2.0, start=0.5):
        eager = pipe(**call).images
    torch._dynamo.reset()
    counters.clear()
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    try:
        with seg.enable_seg(pipe, blur_sigma=2.0, start=0.5):
            warm = pipe(**call).images  # warm-up: steps without SEG, then with SEG
            graphs = counters["stats"]["unique_graphs"]
            with torch._dynamo.config.patch(error_on_recompile=True):
                again = pipe(**call).images
        assert counters["stats"]["unique_graphs"] == graphs <= 2
        assert torch.equal(warm, again)
        assert (warm - eager).abs().max() <= 1e-5
    finally:
        pipe.unet = pipe.unet._orig_mod
        torch._dynamo.reset()
