"""torch.compile in the usual styles: SEG equals eager SEG and never breaks ``fullgraph=True``.

Each test compiles the denoiser of a pipeline whose eager SEG output it computed first, runs the same call
compiled, and restores the eager module. The hooks read the call context through an attribute dynamo guards
on, so a compiled graph never serves a call it was not traced for.
"""

from __future__ import annotations

import copy

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, latents, make_pipe
from smoothed_energy_guidance.pipelines.tiny import tiny_flux_components

COMPILED_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def sdxl_pipe(components, cls=None):
    cls = cls or seg.StableDiffusionXLSEGPipeline
    return make_pipe(cls, {**components, "unet": copy.deepcopy(components["unet"])})


def sdxl_call(**extra):
    return dict(
        prompt="a cube",
        num_inference_steps=3,
        output_type="latent",
        latents=latents(1, 16, 16),
        guidance_scale=5.0,
        **extra,
    )


def compile_in_style(module, style: str, backend: str):
    """The module to call after compiling ``module`` in ``style`` (in place where the style is in place)."""
    if style == "torch.compile":
        return torch.compile(module, backend=backend)
    if style == "compile(fullgraph)":
        module.compile(fullgraph=True, backend=backend)
    elif style == "compile_repeated_blocks(fullgraph)":
        module.compile_repeated_blocks(fullgraph=True, backend=backend)
    return module


def uncompiled(module):
    return getattr(module, "_orig_mod", module)


STYLES = ["torch.compile", "compile(fullgraph)", "compile_repeated_blocks(fullgraph)"]
# Dynamo does not guard on module hooks: a graph traced for one instance of a repeated block class without
# SEG's hooks (a down block) is reused for the instance that has them (the mid block), and the guider's
# hooks, attached per cond call, come after the uncond call's trace. Hooks that stay registered while the
# pipeline or guider is armed are the fix (open, see the closing note of the engine issue).
NOT_YET = pytest.mark.xfail(strict=True, reason="hooks attached after a trace of the same code are not seen")
WINDOW = {"seg_guidance_end": 0.5}  # steps 0 and 1 of 3


@pytest.mark.parametrize(
    "style, seg_args",
    [
        ("torch.compile", {}),
        ("torch.compile", WINDOW),
        ("compile(fullgraph)", {}),  # a window read inside the traced call would retrace on every step
        pytest.param("compile_repeated_blocks(fullgraph)", {}, marks=NOT_YET),
    ],
    ids=["torch.compile", "torch.compile-window", "compile(fullgraph)", "compile_repeated_blocks(fullgraph)"],
)
def test_compiled_sdxl_unet_equals_eager_seg(components, style, seg_args):
    pipe = sdxl_pipe(components)
    args = dict(seg_blur_sigma=2.0, **seg_args)
    eager = pipe(**sdxl_call(**args)).images
    plain = pipe(**sdxl_call(seg_scale=0.0)).images
    module = pipe.unet
    pipe.unet = compile_in_style(module, style, backend="eager")
    try:
        compiled = pipe(**sdxl_call(**args)).images
        again = pipe(**sdxl_call(**args)).images
    finally:
        pipe.unet = uncompiled(pipe.unet)
    assert (compiled - eager).abs().max() <= COMPILED_TOLERANCE
    assert torch.equal(compiled, again)
    assert (eager - plain).abs().max() > MIN_EFFECT


def test_inductor_compiled_sdxl_unet_equals_eager_seg(components):
    """Inductor reorders float sums: SEG's output is as close to eager as inductor's own plain CFG output."""
    pipe = sdxl_pipe(components)
    eager = pipe(**sdxl_call(seg_blur_sigma=2.0)).images
    eager_cfg = pipe(**sdxl_call(seg_scale=0.0)).images
    pipe.unet = torch.compile(pipe.unet, backend="inductor")
    try:
        compiled = pipe(**sdxl_call(seg_blur_sigma=2.0)).images
        compiled_cfg = pipe(**sdxl_call(seg_scale=0.0)).images
    finally:
        pipe.unet = uncompiled(pipe.unet)
    inductor_rounding = (compiled_cfg - eager_cfg).abs().max().item()
    assert (compiled - eager).abs().max() <= max(COMPILED_TOLERANCE, 2 * inductor_rounding)
    assert (eager - eager_cfg).abs().max() > MIN_EFFECT


@pytest.mark.parametrize("style", ["torch.compile", pytest.param("compile_repeated_blocks(fullgraph)", marks=NOT_YET)])
def test_compiled_flux_transformer_equals_eager_seg(style):
    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))

    def run():
        return pipe(
            "a cube",
            num_inference_steps=2,
            height=32,
            width=32,
            max_sequence_length=8,
            output_type="latent",
            seg_blur_sigma=1.0,
            generator=torch.Generator().manual_seed(0),
        ).images

    eager = run()
    pipe.transformer = compile_in_style(pipe.transformer, style, backend="eager")
    try:
        compiled = run()
    finally:
        pipe.transformer = uncompiled(pipe.transformer)
    assert (compiled - eager).abs().max() <= COMPILED_TOLERANCE


@pytest.mark.parametrize("style", [pytest.param(style, marks=NOT_YET) for style in STYLES])
def test_compiled_unet_through_the_guider_equals_eager(components, style):
    from test_guider import modular

    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=2.0)
    parts = {**components, "unet": copy.deepcopy(components["unet"])}
    pipe = modular("StableDiffusionXLAutoBlocks", parts, guider)

    def run():
        return pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents")

    eager = run()
    unet = pipe.unet
    compiled_unet = compile_in_style(unet, style, backend="eager")
    pipe.update_components(unet=compiled_unet)
    try:
        compiled = run()
    finally:
        pipe.update_components(unet=uncompiled(compiled_unet))
    assert (compiled - eager).abs().max() <= COMPILED_TOLERANCE
