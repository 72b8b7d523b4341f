"""Shared offline fixtures: tiny SDXL pipelines with random, sharpened attention."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOLERANCE = 1e-4
# SEG must move the latents by far more than the tolerance, or an equivalence proves nothing.
MIN_EFFECT = 100 * TOLERANCE


@pytest.fixture(scope="session")
def components():
    from smoothed_energy_guidance.testing import tiny_sdxl_components

    return tiny_sdxl_components(seed=0)


def make_pipe(cls, components, **extra):
    pipe = cls(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def seg_pipe(components):
    from smoothed_energy_guidance import StableDiffusionXLSEGPipeline

    return make_pipe(StableDiffusionXLSEGPipeline, components)


@pytest.fixture
def plain_pipe(components):
    from diffusers import StableDiffusionXLPipeline

    return make_pipe(StableDiffusionXLPipeline, components)


def latents(batch: int, height: int, width: int, channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def layer_names(unet, prefix: str = "", endswith: str = ".attn1") -> list[str]:
    """Self-attention names picked by the tests themselves, independent of the package's grammar."""
    return [name for name, _ in unet.named_modules() if name.startswith(prefix) and name.endswith(endswith)]


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def assert_matches_reference(seg_pipe, host_pipe, ref_layers, seg_args, make_call, sigma, cfg, rescale=0.0):
    """Run SEG, the reference (on the plain host pipeline) and the plain pipeline; return SEG's output.

    ``make_call()`` returns fresh call arguments (fresh generators) for each run.
    """
    from reference import reference_seg

    ours = seg_pipe(**make_call(), **seg_args).images
    guidance_scale = make_call().get("guidance_scale", 5.0)
    with reference_seg(host_pipe.unet, ref_layers, sigma, seg_args.get("seg_scale", 3.0), guidance_scale, cfg, rescale):
        reference = host_pipe(**make_call()).images
    plain = host_pipe(**make_call()).images
    error = (ours - reference).abs().max().item()
    effect = (plain - reference).abs().max().item()
    assert error <= TOLERANCE, f"SEG differs from the reference by {error}"
    assert effect > MIN_EFFECT, f"SEG moved the output by only {effect}; the test would prove nothing"
    return ours


@pytest.fixture(scope="module")
def comfy():
    """A ComfyUI session for one test module (the real ComfyUI in ../shared/comfyui)."""
    from comfyui_host import comfy_session

    with comfy_session() as comfy:
        yield comfy


@pytest.fixture(scope="module")
def node(comfy):
    """This project's ComfyUI node module, imported inside that session."""
    from smoothed_energy_guidance.comfyui import nodes

    return nodes
