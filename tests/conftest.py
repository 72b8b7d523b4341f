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
    from smoothed_energy_guidance.pipelines.tiny import tiny_sdxl_components

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
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )
