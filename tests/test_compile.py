"""torch.compile in the usual styles: SEG equals eager SEG and never breaks ``fullgraph=True``.

Each test computes eager outputs first, then compiles the denoiser and runs plain and SEG calls in turn (a
plain warm-up first, SEG toggled, a second compiled denoiser in between), and restores the eager module.
The hooks read the call context through an attribute dynamo guards on, and dynamo guards on module hooks
(``make_torch_compile_see_hooks``), so a graph never serves a call it was not traced for.
"""

from __future__ import annotations

import copy

import pytest
import torch

import smoothed_energy_guidance as seg
from conftest import MIN_EFFECT, latents, make_pipe
from smoothed_energy_guidance.testing import tiny_flux_components

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
WINDOW = {"seg_guidance_end": 0.5}  # steps 0 and 1 of 3


def toggled_runs(pipe, swap, seg_args):
    """Eager SEG and plain outputs, then compiled: a plain warm-up call, SEG, plain again, SEG again."""
    eager_seg = pipe(**sdxl_call(**seg_args)).images
    eager_plain = pipe(**sdxl_call(seg_scale=0.0)).images
    with swap():
        compiled = [pipe(**sdxl_call(**args)).images for args in ({"seg_scale": 0.0}, seg_args) * 2]
    for plain, seg_result in (compiled[0:2], compiled[2:4]):
        assert (plain - eager_plain).abs().max() <= COMPILED_TOLERANCE
        assert (seg_result - eager_seg).abs().max() <= COMPILED_TOLERANCE
    assert (eager_seg - eager_plain).abs().max() > MIN_EFFECT


def compiled_unet(pipe, style, backend="eager"):
    """A context in which ``pipe.unet`` is compiled in ``style``; the eager module comes back after it."""
    import contextlib

    @contextlib.contextmanager
    def swap():
        module = pipe.unet
        pipe.unet = compile_in_style(module, style, backend)
        try:
            yield
        finally:
            pipe.unet = uncompiled(pipe.unet)

    return swap


@pytest.mark.parametrize(
    "style, seg_args",
    [
        ("torch.compile", {"seg_blur_sigma": 2.0}),
        ("torch.compile", {"seg_blur_sigma": 2.0, **WINDOW}),
        # a step window would be read inside the traced call here, and retrace on every step
        ("compile(fullgraph)", {"seg_blur_sigma": 2.0}),
        ("compile_repeated_blocks(fullgraph)", {"seg_blur_sigma": 2.0}),
        ("compile_repeated_blocks(fullgraph)", {"seg_blur_sigma": 2.0, **WINDOW}),
    ],
    ids=["torch.compile", "torch.compile-window", "compile(fullgraph)", "repeated-blocks", "repeated-blocks-window"],
)
def test_compiled_sdxl_unet_after_a_plain_warm_up_and_toggled_equals_eager(components, style, seg_args):
    pipe = sdxl_pipe(components)
    toggled_runs(pipe, compiled_unet(pipe, style), seg_args)


def test_inductor_compiled_sdxl_unet_after_a_plain_warm_up_and_toggled_equals_eager(components):
    """Inductor reorders float sums: SEG's output is as close to eager as inductor's own plain CFG output."""
    pipe = sdxl_pipe(components)
    eager = pipe(**sdxl_call(seg_blur_sigma=2.0)).images
    eager_cfg = pipe(**sdxl_call(seg_scale=0.0)).images
    with compiled_unet(pipe, "compile(fullgraph)", backend="inductor")():
        compiled_cfg = pipe(**sdxl_call(seg_scale=0.0)).images  # warm-up without SEG
        compiled = pipe(**sdxl_call(seg_blur_sigma=2.0)).images
        compiled_cfg_again = pipe(**sdxl_call(seg_scale=0.0)).images
    inductor_rounding = (compiled_cfg - eager_cfg).abs().max().item()
    assert (compiled - eager).abs().max() <= max(COMPILED_TOLERANCE, 2 * inductor_rounding)
    assert torch.equal(compiled_cfg, compiled_cfg_again)
    assert (eager - eager_cfg).abs().max() > MIN_EFFECT


@pytest.mark.parametrize("style", ["torch.compile", "compile(fullgraph)"])
def test_a_second_compiled_unet_of_the_same_class_without_seg_in_between(components, style):
    """Base with SEG, a refiner-like second pipeline without it, both compiled: SEG on A, plain B, SEG on A."""
    a, b = sdxl_pipe(components), sdxl_pipe(components, cls=seg.StableDiffusionXLSEGPipeline)
    eager_a = a(**sdxl_call(seg_blur_sigma=2.0)).images
    eager_b = b(**sdxl_call(seg_scale=0.0)).images
    with compiled_unet(a, style)(), compiled_unet(b, style)():
        first = a(**sdxl_call(seg_blur_sigma=2.0)).images
        plain_b = b(**sdxl_call(seg_scale=0.0)).images
        again = a(**sdxl_call(seg_blur_sigma=2.0)).images
    assert (first - eager_a).abs().max() <= COMPILED_TOLERANCE
    assert (again - eager_a).abs().max() <= COMPILED_TOLERANCE
    assert (plain_b - eager_b).abs().max() <= COMPILED_TOLERANCE


def compiled_transformer_equals_eager(pipe, run, style: str) -> None:
    """``run(seg_scale)`` eager with SEG and without, then with ``pipe.transformer`` compiled in ``style``: plain,
    SEG, plain, SEG; each compiled output equals its eager one, and SEG moves the output."""
    eager, eager_plain = run(3.0), run(0.0)
    pipe.transformer = compile_in_style(pipe.transformer, style, backend="eager")
    try:
        compiled = [run(scale) for scale in (0.0, 3.0, 0.0, 3.0)]
    finally:
        pipe.transformer = uncompiled(pipe.transformer)
    for plain, seg_result in (compiled[0:2], compiled[2:4]):
        assert (plain - eager_plain).abs().max() <= COMPILED_TOLERANCE
        assert (seg_result - eager).abs().max() <= COMPILED_TOLERANCE
    assert (eager - eager_plain).abs().max() > MIN_EFFECT


@pytest.mark.parametrize("style", ["torch.compile", "compile_repeated_blocks(fullgraph)"])
def test_compiled_flux_transformer_equals_eager_seg(style):
    pipe = make_pipe(seg.FluxSEGPipeline, tiny_flux_components(seed=0))

    def run(scale):
        return pipe(
            "a cube",
            num_inference_steps=2,
            height=32,
            width=32,
            max_sequence_length=8,
            output_type="latent",
            seg_scale=scale,
            seg_blur_sigma=1.0,
            generator=torch.Generator().manual_seed(0),
        ).images

    compiled_transformer_equals_eager(pipe, run, style)


@pytest.mark.parametrize("style", STYLES)
def test_compiled_unet_through_the_guider_after_a_cfg_guider_run_equals_eager(components, style):
    from diffusers import ClassifierFreeGuidance
    from test_guider import modular

    guider = seg.SmoothedEnergyGuidance(guidance_scale=5.0, blur_sigma=2.0)
    parts = {**components, "unet": copy.deepcopy(components["unet"])}
    pipe = modular("StableDiffusionXLAutoBlocks", parts, guider)

    def run(with_guider):
        pipe.update_components(guider=with_guider)
        return pipe(prompt="a cube", num_inference_steps=3, latents=latents(1, 16, 16), output="latents")

    cfg_guider = ClassifierFreeGuidance(guidance_scale=5.0)
    eager, eager_cfg = run(guider), run(cfg_guider)
    compiled_module = compile_in_style(pipe.unet, style, backend="eager")
    pipe.update_components(unet=compiled_module)
    try:
        compiled = [run(g) for g in (cfg_guider, guider, cfg_guider, guider)]
    finally:
        pipe.update_components(unet=uncompiled(compiled_module))
    for plain, seg_result in (compiled[0:2], compiled[2:4]):
        assert (plain - eager_cfg).abs().max() <= COMPILED_TOLERANCE
        assert (seg_result - eager).abs().max() <= COMPILED_TOLERANCE
    assert (eager - eager_cfg).abs().max() > MIN_EFFECT


FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, {tests!r})
import smoothed_energy_guidance as seg
from conftest import latents, make_pipe
from diffusers import StableDiffusionXLPipeline
from smoothed_energy_guidance.testing import tiny_sdxl_components

pipe = make_pipe(StableDiffusionXLPipeline, tiny_sdxl_components(seed=0))
def run():
    return pipe("a cube", num_inference_steps=2, output_type="latent", latents=latents(1, 16, 16)).images
plain = run()
with seg.enable_seg(pipe, blur_sigma=2.0):
    eager = run()
pipe.unet.compile(fullgraph=True, backend="eager")
assert torch.equal(run(), plain)  # traced before SEG ever attached in this process
with seg.enable_seg(pipe, blur_sigma=2.0):
    compiled = run()
print((compiled - eager).abs().max().item(), (eager - plain).abs().max().item())
"""


def test_a_unet_compiled_and_warmed_up_before_seg_first_attaches_in_the_process(tmp_path):
    """The first attach in a process makes dynamo guard on hooks and drops graphs traced without that guard."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS.format(tests=str(Path(__file__).parent)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    error, effect = map(float, result.stdout.split()[-2:])
    assert error <= COMPILED_TOLERANCE
    assert effect > MIN_EFFECT


@pytest.mark.parametrize("style", STYLES)
def test_compiled_wan_transformer_with_a_replayed_prefix_equals_eager_seg(style):
    """Wan's perturbed prediction is a call of its own whose prefix blocks replay the cond call's outputs
    (diffusers' HookRegistry replaces those blocks' forward): compiled in every style, it equals eager."""
    from test_video import CALL, embeddings, wan_parts

    pipe = make_pipe(seg.WanSEGPipeline, wan_parts())

    def run(scale):
        call = dict(CALL, **embeddings(), guidance_scale=4.0, output_type="latent")
        return pipe(**call, seg_scale=scale, seg_blur_sigma=2.0, generator=torch.Generator().manual_seed(0)).frames

    compiled_transformer_equals_eager(pipe, run, style)
