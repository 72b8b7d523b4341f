"""The guidance window counts the steps of the loop the pipeline really runs, for every scheduler.

Which UNet calls carried SEG's rows is seen from outside (the batch entering the last layer),
and compared with the steps the test itself expects: text2img runs every step; img2img and
inpaint at strength a run the last ``int(steps·a)`` steps; multi-call schedulers (``order`` 2)
spend two calls on a step except on the last step, which takes one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image

import smoothed_energy_guidance as seg
from conftest import make_pipe
from smoothed_energy_guidance.testing import tiny_sdxl_components

STEPS = 8
SCHEDULERS = sorted(EulerDiscreteScheduler().compatibles, key=lambda cls: cls.__name__)


@pytest.fixture(scope="module")
def parts():
    return tiny_sdxl_components(seed=0)


def picture(seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3 if mode == "RGB" else 1), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


def expected_steps_run(task: str, strength: float) -> int:
    return STEPS if task == "text2img" else min(int(STEPS * strength), STEPS)


def run_and_watch(pipe, task: str, strength: float, **seg_args) -> list[int]:
    seen: list[int] = []
    handle = pipe.unet.conv_out.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    call = dict(prompt="a cube", num_inference_steps=STEPS, output_type="latent", guidance_scale=5.0)
    if task != "text2img":
        call.update(image=picture(0), strength=strength)
    if task == "inpaint":
        call.update(mask_image=picture(1, "L"))
    try:
        pipe(**call, generator=torch.Generator().manual_seed(0), height=16, width=16, **seg_args)
    finally:
        handle.remove()
    return seen


def pipeline_class(task: str):
    return {
        "text2img": seg.StableDiffusionXLSEGPipeline,
        "img2img": seg.StableDiffusionXLSEGImg2ImgPipeline,
        "inpaint": seg.StableDiffusionXLSEGInpaintPipeline,
    }[task]


CASES = [("text2img", 1.0)] + [(task, s) for task in ("img2img", "inpaint") for s in (0.3, 0.5, 1.0)]


@pytest.mark.parametrize("scheduler_class", SCHEDULERS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("task, strength", CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_window_selects_the_intended_steps(parts, scheduler_class, task, strength):
    pipe = make_pipe(pipeline_class(task), parts)
    pipe.scheduler = scheduler_class.from_config(parts["scheduler"].config)
    order = pipe.scheduler.order

    everywhere = run_and_watch(pipe, task, strength)
    assert everywhere and all(rows == 3 for rows in everywhere), f"SEG was off on some steps: {everywhere}"
    steps_run = math.ceil(len(everywhere) / order)
    if scheduler_class.__name__ != "PNDMScheduler":  # PLMS repeats one timestep: one extra loop call
        assert steps_run == expected_steps_run(task, strength)

    windowed = run_and_watch(pipe, task, strength, seg_guidance_start=0.25, seg_guidance_end=0.75)
    assert len(windowed) == len(everywhere)
    steps = [call // order for call in range(len(windowed))]
    wanted = [0.25 <= step / steps_run < 0.75 for step in steps]
    assert [rows == 3 for rows in windowed] == wanted
    assert any(wanted) and not all(wanted)
    # both calls of a multi-call step agree
    by_step: dict[int, set[int]] = {}
    for step, rows in zip(steps, windowed, strict=True):
        by_step.setdefault(step, set()).add(rows)
    assert all(len(values) == 1 for values in by_step.values())
